"""Input checks against an MLflow signature: feature names, types, finite and representable values, known labels."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from contracts.api import FeatureValue, Label
from serving.errors import InvalidFeatures, InvalidLabel, ModelSourceError

FLOAT_TYPES = {"double": "float64", "float": "float32"}
"""MLflow float types and the numpy dtype a model column gets."""
INT_TYPES = {"long": "int64", "integer": "int32"}
"""MLflow integer types and the numpy dtype a model column gets."""
_INT_RANGES = {name: (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)) for name, dtype in INT_TYPES.items()}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """One input column of a model signature.

    Attributes:
        name: Column name.
        type: MLflow data type name (`double`, `float`, `long`, `integer`, `boolean`, `string`, ...).
        required: Whether a request must carry the column.
    """

    name: str
    type: str
    required: bool = True


def _json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def coerce(value: FeatureValue, type_name: str, *, max_abs: float = math.inf) -> tuple[str | None, FeatureValue]:
    """Check one value against a signature type.

    Args:
        value: The value as decoded from JSON.
        type_name: The signature's type of its column.
        max_abs: Largest magnitude a number may have (the model may cast to a narrower type inside).

    Returns:
        (problem, value converted for the model); `problem` is None when the value fits, else what was
        wrong with it (`got string`, `got integer out of range`) for the error message.
    """
    # bool is an int subclass in Python but never a valid number for a model column.
    if type_name in FLOAT_TYPES:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return f"got {_json_type(value)}", value
        try:
            # JSON integers have no size limit: 10**400 decodes fine but fits no float.
            converted = float(value)
        except OverflowError:
            return f"got {_json_type(value)} out of range", value
        limit = min(max_abs, _FLOAT32_MAX) if type_name == "float" else max_abs
        if not math.isfinite(converted) or abs(converted) > limit:
            return f"got {_json_type(value)} out of range (|x| <= {limit:.3g})", value
        return None, converted
    if type_name in INT_TYPES:
        if not isinstance(value, int) or isinstance(value, bool):
            return f"got {_json_type(value)}", value
        low, high = _INT_RANGES[type_name]
        if not low <= value <= high or abs(value) > max_abs:
            return "got integer out of range", value
        return None, value
    if type_name == "boolean":
        return (None if isinstance(value, bool) else f"got {_json_type(value)}"), value
    if type_name == "string":
        return (None if isinstance(value, str) else f"got {_json_type(value)}"), value
    # Types JSON cannot carry natively (datetime, binary, ...) are passed through for the model to judge.
    return None, value


def check_features(
    features: Mapping[str, FeatureValue], specs: tuple[FeatureSpec, ...], *, what: str, max_abs: float = math.inf
) -> dict[str, FeatureValue | None]:
    """Validate a request's features against a signature.

    Args:
        features: Feature name to value, as the client sent it.
        specs: The signature's columns.
        what: The model, for the error message (`Iris v3`).
        max_abs: Largest magnitude of a number.

    Returns:
        The features in signature order, converted to the signature's types (int -> float for doubles).

    Raises:
        InvalidFeatures: Columns are missing, unknown, of the wrong type or out of range; the error names each.
    """
    known = {f.name for f in specs}
    missing = [f.name for f in specs if f.required and f.name not in features]
    unknown = sorted(name for name in features if name not in known)
    wrong: dict[str, str] = {}
    row: dict[str, FeatureValue | None] = {}
    for spec in specs:
        if spec.name not in features:
            row[spec.name] = None
            continue
        problem, converted = coerce(features[spec.name], spec.type, max_abs=max_abs)
        if problem is not None:
            wrong[spec.name] = f"expected {spec.type}, {problem}"
        row[spec.name] = converted
    if missing or unknown or wrong:
        problems = []
        if missing:
            problems.append(f"missing features: {', '.join(missing)}")
        if unknown:
            problems.append(f"unknown features: {', '.join(unknown[:20])}")
        if wrong:
            problems.append("wrong types: " + ", ".join(f"{k} {v}" for k, v in wrong.items()))
        raise InvalidFeatures(
            f"features do not match the signature of {what}: " + "; ".join(problems),
            extra={
                "missing": missing,
                "unknown": unknown,
                "wrong_type": wrong,
                "expected": {f.name: f.type for f in specs},
            },
        )
    return row


def check_label(label: Label, classes: frozenset[str] | None, *, what: str) -> str:
    """The label as stored (a string), when it is one of the model's classes.

    Args:
        label: The label the client sent.
        classes: The classes of the model that made the prediction; None when unknown (any label goes).
        what: The model, for the error message.

    Raises:
        InvalidLabel: The label is not one of the classes.
    """
    text = str(label)
    if classes is not None and text not in classes:
        shown = sorted(classes)
        raise InvalidLabel(
            f"label {text[:100]!r} is not a class of {what}: expected one of {', '.join(shown[:20])}",
            extra={"label": text[:100], "classes": shown[:100]},
        )
    return text


def native_label(value: Any) -> Label:
    """Convert one predicted value to the API's label type (str or int).

    Args:
        value: One element of a model's `predict` output (numpy scalar, str, number).

    Returns:
        An int for integral numbers, else a str.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return str(value)


def features_from_signature(signature: Any, what: str) -> tuple[FeatureSpec, ...]:
    """Read the named input columns and their types from an MLflow model signature.

    Args:
        signature: `mlflow.models.ModelSignature` or None.
        what: Model description for error messages.

    Returns:
        The input columns in signature order.

    Raises:
        ModelSourceError: No signature, or one without named columns.
    """
    inputs = getattr(signature, "inputs", None)
    if inputs is None or inputs.is_tensor_spec():
        raise ModelSourceError(
            f"{what} has no column-based input signature; log it with signature=infer_signature(X, y)"
        )
    specs = []
    for col in inputs.inputs:
        if not col.name:
            raise ModelSourceError(f"{what} has an input signature without column names")
        type_name = getattr(col.type, "name", str(col.type))
        specs.append(FeatureSpec(name=col.name, type=type_name, required=getattr(col, "required", True)))
    return tuple(specs)
