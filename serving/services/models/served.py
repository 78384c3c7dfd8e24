"""One loaded model version: its signature, its classes, the checks of a request, predicting, and warming it up."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from contracts.api import FeatureValue, Label
from serving.services.models.signature import (
    FLOAT_TYPES,
    INT_TYPES,
    FeatureSpec,
    check_features,
    check_label,
    native_label,
)

if TYPE_CHECKING:
    from serving.services.models.lean import LeanPath

logger = logging.getLogger(__name__)

WARM_UP_PREDICTIONS = 5
"""Predictions run on a freshly loaded version before it serves (cold pipelines answer several times slower)."""


@dataclass(frozen=True)
class ServedModel:
    """One loaded model version with the feature schema of its signature.

    Attributes:
        name: Registered model name.
        version: Registered model version.
        features: Input columns in signature order.
        estimator: Object with a scikit-learn style `predict(DataFrame)`.
        classes: The labels it can predict, as strings (None: unknown, any label is accepted).
    """

    name: str
    version: str
    features: tuple[FeatureSpec, ...]
    estimator: Any
    classes: frozenset[str] | None = None
    lean: LeanPath | None = None
    """A verified faster path to the same predictions (see `lean.with_lean`); None: the estimator's own predict."""
    execution: str = "model predict"
    """Which path predicts, and why (shown in /health)."""

    @property
    def what(self) -> str:
        """`Name vN`, for messages."""
        return f"{self.name} v{self.version}"

    def check(self, features: Mapping[str, FeatureValue], *, max_abs: float = math.inf) -> dict[str, Any]:
        """Validate a request's features against the signature (see `signature.check_features`)."""
        return check_features(features, self.features, what=self.what, max_abs=max_abs)

    def check_label(self, label: Label) -> str:
        """The label as stored, when it is one of this model's classes (see `signature.check_label`)."""
        return check_label(label, self.classes, what=self.what)

    def frame(self, rows: Sequence[Mapping[str, FeatureValue | None]]) -> pd.DataFrame:
        """Checked rows as the model's input: columns in signature order with the signature's dtypes.

        PyCaret pipelines select and transform by column name and dtype, so an object column of floats would
        break them; an integer column with a missing value stays `object`.
        """
        names = [f.name for f in self.features]
        frame = pd.DataFrame([[row.get(name) for name in names] for row in rows], columns=names)
        dtypes: dict[str, str] = {}
        for f in self.features:
            if f.type in FLOAT_TYPES:
                dtypes[f.name] = FLOAT_TYPES[f.type]
            elif f.type in INT_TYPES and all(row.get(f.name) is not None for row in rows):
                dtypes[f.name] = INT_TYPES[f.type]
        return frame.astype(dtypes) if dtypes else frame

    def predict_many(self, rows: Sequence[Mapping[str, FeatureValue | None]]) -> list[Label]:
        """Predict many rows in one model call (the per-call cost of a pipeline is paid once).

        Args:
            rows: Checked features (outputs of `check`).

        Returns:
            The model's native labels (str or int), one per row, in order.
        """
        if not rows:
            return []
        if self.lean is not None:
            return self.lean.predict(rows)
        return [native_label(v) for v in np.asarray(self.estimator.predict(self.frame(rows)))]

    def predict(self, row: Mapping[str, FeatureValue | None]) -> Label:
        """Predict one row.

        Args:
            row: Checked features (the output of `check`).

        Returns:
            The model's native label as str or int.
        """
        return self.predict_many([row])[0]


def example_row(example: Any, features: tuple[FeatureSpec, ...]) -> dict[str, FeatureValue] | None:
    """The first row of a logged input example as request features, or None for a shape we cannot read.

    Args:
        example: What `mlflow.models.Model.load_input_example` returned (DataFrame, dict, ndarray, ...).
        features: The signature's columns (names for column-less arrays).

    Returns:
        Column name to plain Python value (numpy scalars unwrapped).
    """
    row: dict[str, Any]
    if isinstance(example, pd.DataFrame):
        if example.empty:
            return None
        row = example.iloc[0].to_dict()
    elif isinstance(example, Mapping):
        row = {str(k): (v[0] if isinstance(v, list | tuple | np.ndarray) and len(v) else v) for k, v in example.items()}
    elif isinstance(example, np.ndarray) and example.ndim in (1, 2) and example.size:
        values = example if example.ndim == 1 else example[0]
        if len(values) != len(features):
            return None
        row = {f.name: v for f, v in zip(features, values, strict=True)}
    else:
        return None
    return {name: (v.item() if isinstance(v, np.generic) else v) for name, v in row.items()}


def warm_up(served: ServedModel, example: Any, *, rounds: int = WARM_UP_PREDICTIONS) -> int:
    """Run `rounds` predictions on the first row of an input example, through the path live requests take.

    Args:
        served: The freshly loaded version.
        example: Its logged input example.
        rounds: How many predictions to run.

    Returns:
        The number of predictions run (0 when the example's shape is not readable).

    Raises:
        InvalidFeatures: The example does not match the signature.
        Exception: Whatever the model raises.
    """
    features = example_row(example, served.features)
    if features is None:
        logger.warning(
            "%s: cannot read a row from its input example (%s); no warm-up", served.what, type(example).__name__
        )
        return 0
    row = served.check(features)
    for _ in range(rounds):
        served.predict(row)
    return rounds


def classes_of(estimator: Any, example_prediction: Label | None) -> frozenset[str] | None:
    """The estimator's own `classes_`, when a real prediction is among them (PyCaret pipelines encode the target,
    so their `classes_` may be 0..k-1 while they predict names); else None.

    Args:
        estimator: The loaded model.
        example_prediction: What it predicted for its input example, if it was run.
    """
    classes = getattr(estimator, "classes_", None)
    if classes is None or example_prediction is None:
        return None
    try:
        found = frozenset(str(native_label(c)) for c in np.asarray(classes).ravel())
    except Exception:
        return None
    return found if str(example_prediction) in found else None
