"""Models served by MLflow alias: the model source, loaded versions, the swappable champion/challenger set."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from contracts.api import Arm, FeatureValue, Label
from contracts.registry import CHALLENGER, CHAMPION
from serving.errors import InvalidFeatures, ModelSourceError, RouterError

logger = logging.getLogger(__name__)

_FLOAT_TYPES = {"double": "float64", "float": "float32"}
_INT_TYPES = {"long": "int64", "integer": "int32"}


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


def _coerce(value: FeatureValue, type_name: str) -> tuple[bool, FeatureValue]:
    """Check one value against a signature type; returns (ok, value converted for the model)."""
    # bool is an int subclass in Python but never a valid number for a model column.
    if type_name in _FLOAT_TYPES:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if type_name in _INT_TYPES:
        return isinstance(value, int) and not isinstance(value, bool), value
    if type_name == "boolean":
        return isinstance(value, bool), value
    if type_name == "string":
        return isinstance(value, str), value
    # Types JSON cannot carry natively (datetime, binary, ...) are passed through for the model to judge.
    return True, value


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


@dataclass(frozen=True)
class ServedModel:
    """One loaded model version with the feature schema of its signature.

    Attributes:
        name: Registered model name.
        version: Registered model version.
        features: Input columns in signature order.
        estimator: Object with a scikit-learn style `predict(DataFrame)`.
    """

    name: str
    version: str
    features: tuple[FeatureSpec, ...]
    estimator: Any

    def check(self, features: Mapping[str, FeatureValue]) -> dict[str, FeatureValue | None]:
        """Validate a request's features against the signature.

        Args:
            features: Feature name to value, as the client sent it.

        Returns:
            The features in signature order, converted to the signature's types (int -> float for doubles).

        Raises:
            InvalidFeatures: Columns are missing, unknown, or of the wrong type; the error names each one.
        """
        known = {f.name for f in self.features}
        missing = [f.name for f in self.features if f.required and f.name not in features]
        unknown = sorted(name for name in features if name not in known)
        wrong: dict[str, str] = {}
        row: dict[str, FeatureValue | None] = {}
        for spec in self.features:
            if spec.name not in features:
                row[spec.name] = None
                continue
            ok, converted = _coerce(features[spec.name], spec.type)
            if not ok:
                wrong[spec.name] = f"expected {spec.type}, got {_json_type(features[spec.name])}"
            row[spec.name] = converted
        if missing or unknown or wrong:
            problems = []
            if missing:
                problems.append(f"missing features: {', '.join(missing)}")
            if unknown:
                problems.append(f"unknown features: {', '.join(unknown)}")
            if wrong:
                problems.append("wrong types: " + ", ".join(f"{k} {v}" for k, v in wrong.items()))
            raise InvalidFeatures(
                f"features do not match the signature of {self.name} v{self.version}: " + "; ".join(problems),
                extra={
                    "missing": missing,
                    "unknown": unknown,
                    "wrong_type": wrong,
                    "expected": {f.name: f.type for f in self.features},
                },
            )
        return row

    def predict(self, row: Mapping[str, FeatureValue | None]) -> Label:
        """Predict one row.

        Args:
            row: Checked features (the output of `check`).

        Returns:
            The model's native label as str or int.
        """
        # Columns in signature order with the signature's dtypes: PyCaret pipelines select and
        # transform by column name and dtype, so an object column of floats would break them.
        names = [f.name for f in self.features]
        frame = pd.DataFrame([[row.get(name) for name in names]], columns=names)
        dtypes: dict[str, str] = {}
        for f in self.features:
            if f.type in _FLOAT_TYPES:
                dtypes[f.name] = _FLOAT_TYPES[f.type]
            elif f.type in _INT_TYPES and row.get(f.name) is not None:
                dtypes[f.name] = _INT_TYPES[f.type]
        if dtypes:
            frame = frame.astype(dtypes)
        return native_label(np.asarray(self.estimator.predict(frame))[0])


@dataclass(frozen=True)
class ModelSet:
    """The champion and challenger served right now; replaced as a whole, never mutated.

    Attributes:
        model_name: Registered model name.
        champion: The version behind the `champion` alias, if any could be loaded.
        challenger: The version behind the `challenger` alias, if any.
    """

    model_name: str
    champion: ServedModel | None = None
    challenger: ServedModel | None = None

    @property
    def champion_version(self) -> str | None:
        """Version of the champion, if loaded."""
        return self.champion.version if self.champion else None

    @property
    def challenger_version(self) -> str | None:
        """Version of the challenger, if loaded."""
        return self.challenger.version if self.challenger else None

    @property
    def experiment_id(self) -> str | None:
        """`v{champion}` alone, `v{champion}-vs-v{challenger}` during an A/B test, None without a champion."""
        if self.champion is None:
            return None
        if self.challenger is None:
            return f"v{self.champion.version}"
        return f"v{self.champion.version}-vs-v{self.challenger.version}"

    def for_arm(self, arm: Arm) -> ServedModel | None:
        """The model that serves an arm."""
        return self.champion if arm == "champion" else self.challenger

    def describe(self) -> str:
        """One human line: which versions serve."""
        champion, challenger = _v(self.champion_version), _v(self.challenger_version)
        return f"{self.model_name}: champion {champion}, challenger {challenger}"


def _v(version: str | None) -> str:
    return f"v{version}" if version else "none"


class SupportsModelSource(Protocol):
    """What the router needs from a model registry (MLflow in production, a stub in tests)."""

    model_name: str

    def open(self) -> None:
        """Acquire clients and scratch space."""

    def close(self) -> None:
        """Release what `open` acquired."""

    def resolve(self, alias: str) -> str | None:
        """The version an alias points to, or None when the alias is not set."""

    def load(self, version: str) -> ServedModel:
        """Load one version (cached by the source)."""


class ModelSource:
    """Resolves `models:/<name>@<alias>` in MLflow and loads each version once.

    The tracking URI is passed to every MLflow call explicitly instead of through
    `mlflow.set_tracking_uri`, so the router never changes process-global MLflow state.
    """

    def __init__(self, tracking_uri: str, model_name: str, *, cache_size: int = 4) -> None:
        """Describe the source; nothing is contacted until `open`.

        Args:
            tracking_uri: MLflow tracking (and registry) URI.
            model_name: Registered model to serve.
            cache_size: Loaded versions kept in memory (champion, challenger and the previous pair).
        """
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self._cache_size = cache_size
        self._cache: OrderedDict[str, ServedModel] = OrderedDict()
        self._client: Any = None
        self._download_dir: Path | None = None

    def open(self) -> None:
        """Create the MLflow client and a scratch folder for downloaded artifacts."""
        # Imported here: importing mlflow takes seconds, and only the real source needs it.
        from mlflow import MlflowClient

        self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        self._download_dir = Path(tempfile.mkdtemp(prefix="driftloop-models-"))

    def close(self) -> None:
        """Drop loaded models and downloaded artifacts."""
        self._cache.clear()
        self._client = None
        if self._download_dir is not None:
            shutil.rmtree(self._download_dir, ignore_errors=True)
            self._download_dir = None

    def _require_client(self) -> Any:
        if self._client is None:
            raise RuntimeError("ModelSource.open() was not called")
        return self._client

    def resolve(self, alias: str) -> str | None:
        """Resolve `models:/<name>@<alias>` to a version.

        Args:
            alias: Registry alias (`champion` or `challenger`).

        Returns:
            The version number as a string, or None when the alias (or the model) does not exist.
        """
        from mlflow.exceptions import MlflowException

        try:
            version = self._require_client().get_model_version_by_alias(self.model_name, alias)
        except MlflowException as exc:
            if _is_not_found(exc):
                return None
            raise
        return str(version.version)

    def load(self, version: str) -> ServedModel:
        """Load a version with `mlflow.sklearn` and read its feature schema from the signature.

        Args:
            version: Registered model version.

        Returns:
            The loaded model; each version is downloaded and unpickled once while it stays in the cache.

        Raises:
            ModelSourceError: The version has no column-based input signature.
        """
        if version in self._cache:
            self._cache.move_to_end(version)
            return self._cache[version]

        import mlflow.sklearn
        from mlflow.artifacts import download_artifacts
        from mlflow.models import Model

        client = self._require_client()
        assert self._download_dir is not None
        # `models:/` URIs and `get_model_info` resolve through the process-global tracking URI, so the
        # artifact location is asked of our own client and loaded from a local copy instead.
        artifact_uri = client.get_model_version_download_uri(self.model_name, version)
        local = download_artifacts(
            artifact_uri=artifact_uri,
            dst_path=str(self._download_dir / version),
            tracking_uri=self.tracking_uri,
        )
        estimator = mlflow.sklearn.load_model(local)
        features = features_from_signature(Model.load(local).signature, f"{self.model_name} v{version}")
        served = ServedModel(name=self.model_name, version=version, features=features, estimator=estimator)
        self._cache[version] = served
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        logger.info("loaded %s v%s from %s", self.model_name, version, artifact_uri)
        return served


def _is_not_found(exc: Exception) -> bool:
    """Whether an MlflowException means "no such alias or model" rather than a broken registry."""
    code = getattr(exc, "error_code", "")
    if code == "RESOURCE_DOES_NOT_EXIST":
        return True
    # The SQL registry reports a missing alias as INVALID_PARAMETER_VALUE ("... alias x not found.").
    return code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc).lower()


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


class ModelManager:
    """Holds the current `ModelSet` and swaps it when the registry aliases move."""

    def __init__(self, source: SupportsModelSource) -> None:
        """Start with nothing loaded.

        Args:
            source: Where versions are resolved and loaded.
        """
        self.source = source
        self._current = ModelSet(model_name=source.model_name)
        # Serializes the periodic refresh and /models/reload; readers never take it.
        self._lock = threading.Lock()

    @property
    def current(self) -> ModelSet:
        """The set serving right now (an immutable snapshot: one request uses one set throughout)."""
        return self._current

    def refresh(self) -> ModelSet:
        """Re-read the aliases and swap in whatever they point to now. Blocking: call from a thread.

        Returns:
            The set serving after the refresh.

        Raises:
            ModelSourceError: The registry could not be read or a version could not be loaded; the
                previous set keeps serving.
        """
        with self._lock:
            previous = self._current
            try:
                champion_v = self.source.resolve(CHAMPION)
                challenger_v = self.source.resolve(CHALLENGER)
                # Both aliases on one version (mid-promotion) is not an experiment.
                if challenger_v == champion_v:
                    challenger_v = None
                new = ModelSet(
                    model_name=self.source.model_name,
                    champion=self._load(champion_v, previous),
                    challenger=self._load(challenger_v, previous),
                )
            except RouterError:
                raise
            except Exception as exc:
                raise ModelSourceError(
                    f"could not refresh the {CHAMPION}/{CHALLENGER} aliases of {self.source.model_name}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if (new.champion_version, new.challenger_version) == (
                previous.champion_version,
                previous.challenger_version,
            ):
                return previous
            self._current = new
            if previous.champion is None and previous.challenger is None:
                logger.info("models loaded: %s", new.describe())
            else:
                logger.info("models swapped: %s (was %s)", new.describe(), previous.describe())
            if new.champion is None:
                logger.warning(
                    "no %s alias on %s: /predict answers 503 until one is set",
                    CHAMPION,
                    self.source.model_name,
                )
            return new

    def _load(self, version: str | None, previous: ModelSet) -> ServedModel | None:
        """A version's model, reusing the one already serving (a promotion moves a loaded challenger to champion)."""
        if version is None:
            return None
        for served in (previous.champion, previous.challenger):
            if served is not None and served.version == version:
                return served
        return self.source.load(version)

    def wait_idle(self) -> None:
        """Block until no refresh is running (call before closing the source)."""
        with self._lock:
            pass
