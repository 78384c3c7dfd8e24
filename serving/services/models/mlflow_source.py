"""The MLflow model source: resolves `models:/<name>@<alias>`, loads each version once, reads its plan and classes."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from contracts.api import ExperimentPlan, Label
from contracts.registry import alias_missing, classes_from_tags, plan_from_tags, registry_missing
from serving.errors import ModelSourceError
from serving.services.models.served import WARM_UP_PREDICTIONS, ServedModel, classes_of, example_row, warm_up
from serving.services.models.signature import features_from_signature

logger = logging.getLogger(__name__)


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
            if registry_missing(exc) or alias_missing(exc):
                return None
            raise
        return str(version.version)

    def plan(self, version: str) -> ExperimentPlan | None:
        """The experiment plan kept in a version's tags (the source of truth), or None when it has none.

        Raises:
            ModelSourceError: The tags do not make a valid plan.
        """
        tags = self._require_client().get_model_version(self.model_name, version).tags
        try:
            return plan_from_tags(tags)
        except Exception as exc:
            what = f"{self.model_name} v{version}"
            raise ModelSourceError(f"{what} has plan tags that are not a valid plan: {exc}") from exc

    def load(self, version: str) -> ServedModel:
        """Load a version with `mlflow.sklearn`, read its feature schema and classes, and warm it up.

        The warm-up runs a few predictions on the version's logged input example (see `warm_up`), so the
        first live requests do not carry the cold-start cost; a version without an example skips it, and a
        failing warm-up is logged and never stops the load. The classes come from the version's
        `driftloop.classes` tag, else from the estimator's `classes_` when its predictions are among them.

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
        tags = client.get_model_version(self.model_name, version).tags
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
        predicted = _warm_up_logged(served, meta, local)
        classes = classes_from_tags(tags) or classes_of(estimator, predicted)
        if classes is None:
            logger.warning("%s: classes unknown (no driftloop.classes tag): labels are not checked", served.what)
        served = ServedModel(
            name=self.model_name, version=version, features=features, estimator=estimator, classes=classes
        )
        self._cache[version] = served
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        logger.info("loaded %s v%s", self.model_name, version)
        return served


def _warm_up_logged(served: ServedModel, meta: Any, model_dir: str) -> Label | None:
    """Warm a loaded version up on its logged input example; only ever logs (a failure must not block loading).

    Returns:
        The prediction for the example's first row, or None when there was no warm-up.
    """
    try:
        example = meta.load_input_example(model_dir)
    except Exception as exc:
        logger.warning("%s: could not read its input example, no warm-up: %s: %s", served.what, type(exc).__name__, exc)
        return None
    if example is None:
        logger.debug("%s has no input example: no warm-up", served.what)
        return None
    started = time.perf_counter()
    try:
        # The last of the warm-up predictions is kept: it tells whether the estimator's `classes_` are real.
        n = warm_up(served, example, rounds=WARM_UP_PREDICTIONS - 1)
        features = example_row(example, served.features)
        predicted = served.predict(served.check(features)) if n and features is not None else None
        n += predicted is not None
    except Exception as exc:
        logger.warning(
            "%s: warm-up on its input example failed (loading anyway): %s: %s", served.what, type(exc).__name__, exc
        )
        return None
    if n:
        logger.info(
            "%s warmed up with %d predictions in %.1f ms", served.what, n, (time.perf_counter() - started) * 1000
        )
    return predicted
