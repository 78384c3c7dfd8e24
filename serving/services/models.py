"""Models served by MLflow alias: the model source, loaded versions, the swappable champion/challenger set."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
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
_INT_RANGES = {name: (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)) for name, dtype in _INT_TYPES.items()}
_FLOAT32_MAX = float(np.finfo(np.float32).max)
WARM_UP_PREDICTIONS = 5
"""Predictions run on a freshly loaded version before it serves (cold pipelines answer several times slower)."""


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


def _coerce(value: FeatureValue, type_name: str) -> tuple[str | None, FeatureValue]:
    """Check one value against a signature type.

    Returns:
        (problem, value converted for the model); `problem` is None when the value fits, else what was
        wrong with it (`got string`, `got integer out of range`) for the error message.
    """
    # bool is an int subclass in Python but never a valid number for a model column.
    if type_name in _FLOAT_TYPES:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return f"got {_json_type(value)}", value
        try:
            # JSON integers have no size limit: 10**400 decodes fine but fits no float.
            converted = float(value)
        except OverflowError:
            return f"got {_json_type(value)} out of range", value
        if type_name == "float" and abs(converted) > _FLOAT32_MAX:
            return f"got {_json_type(value)} out of range", value
        return None, converted
    if type_name in _INT_TYPES:
        if not isinstance(value, int) or isinstance(value, bool):
            return f"got {_json_type(value)}", value
        low, high = _INT_RANGES[type_name]
        if not low <= value <= high:
            return "got integer out of range", value
        return None, value
    if type_name == "boolean":
        return (None if isinstance(value, bool) else f"got {_json_type(value)}"), value
    if type_name == "string":
        return (None if isinstance(value, str) else f"got {_json_type(value)}"), value
    # Types JSON cannot carry natively (datetime, binary, ...) are passed through for the model to judge.
    return None, value


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
            problem, converted = _coerce(features[spec.name], spec.type)
            if problem is not None:
                wrong[spec.name] = f"expected {spec.type}, {problem}"
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
        """Load a version with `mlflow.sklearn`, read its feature schema from the signature and warm it up.

        The warm-up runs a few predictions on the version's logged input example (see `warm_up`), so the
        first live requests do not carry the cold-start cost; a version without an example skips it, and a
        failing warm-up is logged and never stops the load.

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
        meta = Model.load(local)
        features = features_from_signature(meta.signature, f"{self.model_name} v{version}")
        served = ServedModel(name=self.model_name, version=version, features=features, estimator=estimator)
        # Before the version is cached (and so before any swap serves it): pay the cold start here.
        _warm_up_logged(served, meta, local)
        self._cache[version] = served
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        logger.info("loaded %s v%s from %s", self.model_name, version, artifact_uri)
        return served


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
            "%s v%s: cannot read a row from its input example (%s); no warm-up",
            served.name,
            served.version,
            type(example).__name__,
        )
        return 0
    row = served.check(features)
    for _ in range(rounds):
        served.predict(row)
    return rounds


def _warm_up_logged(served: ServedModel, meta: Any, model_dir: str) -> None:
    """Warm a loaded version up on its logged input example; only ever logs (a failure must not block loading)."""
    try:
        example = meta.load_input_example(model_dir)
    except Exception as exc:
        logger.warning(
            "%s v%s: could not read its input example, no warm-up: %s: %s",
            served.name,
            served.version,
            type(exc).__name__,
            exc,
        )
        return
    if example is None:
        logger.debug("%s v%s has no input example: no warm-up", served.name, served.version)
        return
    started = time.perf_counter()
    try:
        n = warm_up(served, example)
    except Exception as exc:
        logger.warning(
            "%s v%s: warm-up on its input example failed (loading anyway): %s: %s",
            served.name,
            served.version,
            type(exc).__name__,
            exc,
        )
        return
    if n:
        logger.info(
            "%s v%s warmed up with %d predictions in %.1f ms",
            served.name,
            served.version,
            n,
            (time.perf_counter() - started) * 1000,
        )


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
