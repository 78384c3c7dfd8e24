from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.models import get_model_info

from contracts.registry import (
    CHALLENGER,
    CHAMPION,
    REFERENCE_ARTIFACT_DIR,
    REFERENCE_FILE,
    TAG_CLASSES,
    TAG_DECISION,
    TAG_PREVIOUS_CHAMPION,
    TAG_TARGET,
    plan_tags,
)
from flows.lib import registry
from flows.lib.training import TrainResult
from tests.conftest import TRAINING_EXPERIMENT

pytestmark = pytest.mark.usefixtures("configured_registry")


def log(trained: TrainResult, iris: pd.DataFrame, model_name: str, **extra):
    return registry.log_candidate(
        pipeline=trained.pipeline,
        train_data=iris,
        reference=iris,
        target="species",
        model_name=model_name,
        params={"models": "lr,dt", "folds": 3},
        metrics=trained.holdout_metrics,
        tags={"driftloop.source": "test"},
        run_name="retrain: test",
        **extra,
    )


@pytest.fixture(scope="module")
def logged(trained: TrainResult, iris: pd.DataFrame):
    return log(trained, iris, "Logged")


def test_log_candidate_registers_version_one_with_run_and_tags(logged, configured_registry: str) -> None:
    run = MlflowClient().get_run(logged.run_id)

    assert str(logged.version) == "1"
    assert logged.tags == {
        TAG_TARGET: "species",
        TAG_CLASSES: '["setosa", "versicolor", "virginica"]',
        "driftloop.source": "test",
    }
    assert run.data.params == {"models": "lr,dt", "folds": "3"}
    assert run.data.metrics["f1_macro"] > 0.8
    assert run.data.tags[TAG_TARGET] == "species"
    assert run.info.run_name == "retrain: test"
    assert str(Path(configured_registry.removeprefix("sqlite:///")).parent) in run.info.artifact_uri


def test_log_candidate_stores_reference_and_signature(logged) -> None:
    artifacts = [f.path for f in MlflowClient().list_artifacts(logged.run_id, REFERENCE_ARTIFACT_DIR)]
    info = get_model_info(f"models:/Logged/{logged.version}")

    assert artifacts == [f"{REFERENCE_ARTIFACT_DIR}/{REFERENCE_FILE}"]
    assert info.signature.inputs.input_names() == [
        "sepal_length",
        "sepal_width",
        "petal_length",
        "petal_width",
    ]
    assert info.signature.outputs is not None


def test_requirements_pin_what_unpickling_needs(trained: TrainResult) -> None:
    pins = registry.pip_requirements(trained.pipeline)

    names = {p.split("==")[0] for p in pins}
    assert {"pycaret", "scikit-learn", "pandas", "cloudpickle"} <= names
    assert all("==" in p for p in pins)


def test_aliases_set_get_delete(logged) -> None:
    assert registry.get_version("Logged", "staging") is None

    registry.set_alias("Logged", "staging", logged.version)
    assert str(registry.get_version("Logged", "staging").version) == str(logged.version)

    registry.delete_alias("Logged", "staging")
    registry.delete_alias("Logged", "staging")  # absent: no error
    assert registry.get_version("Logged", "staging") is None


def test_missing_model_is_none_not_an_error() -> None:
    assert registry.get_version("NoSuchModel", CHAMPION) is None
    registry.delete_alias("NoSuchModel", CHAMPION)


def test_load_reference_and_pipeline_by_alias(logged, iris: pd.DataFrame) -> None:
    registry.set_alias("Logged", CHAMPION, logged.version)

    reference = registry.load_reference("Logged", CHAMPION)
    pipeline = registry.load_pipeline("Logged", CHAMPION)

    pd.testing.assert_frame_equal(reference, iris)
    predictions = pipeline.predict(iris.drop(columns=["species"]).head(5))
    assert list(predictions) == ["setosa"] * 5


def test_load_reference_without_alias_raises() -> None:
    with pytest.raises(LookupError):
        registry.load_reference("NoSuchModel", CHAMPION)


def test_promote_moves_champion_and_ends_the_experiment(trained: TrainResult, iris: pd.DataFrame) -> None:
    first = log(trained, iris, "Promoted")
    second = log(trained, iris, "Promoted")
    registry.set_alias("Promoted", CHAMPION, first.version)
    registry.set_alias("Promoted", CHALLENGER, second.version)

    previous = registry.promote("Promoted", second.version, reason="challenger wins, p=0.01")

    assert previous == str(first.version)
    champion = registry.get_version("Promoted", CHAMPION)
    assert str(champion.version) == str(second.version)
    assert champion.tags[TAG_PREVIOUS_CHAMPION] == str(first.version)
    assert "challenger wins" in champion.tags[TAG_DECISION]
    assert registry.get_version("Promoted", CHALLENGER) is None

    # A retried promotion changes nothing and gives the same answer.
    assert registry.promote("Promoted", second.version, reason="retry") == str(first.version)
    assert registry.get_version("Promoted", CHAMPION).tags[TAG_PREVIOUS_CHAMPION] == str(first.version)


def test_promote_without_champion_returns_none(trained: TrainResult, iris: pd.DataFrame) -> None:
    version = log(trained, iris, "FirstChampion")

    assert registry.promote("FirstChampion", version.version, reason="bootstrap") is None
    assert str(registry.get_version("FirstChampion", CHAMPION).version) == str(version.version)
    assert TAG_PREVIOUS_CHAMPION not in registry.get_version("FirstChampion", CHAMPION).tags


def test_configure_points_mlflow_at_the_store_and_creates_the_experiment(tmp_path: Path) -> None:
    """configure() on a store the test made itself, with an experiment that does not exist yet."""
    uri = f"sqlite:///{tmp_path / 'other.db'}"
    saved = mlflow.get_tracking_uri()
    try:
        registry.configure(uri, "configured-here")
        assert mlflow.get_tracking_uri() == uri
        experiment = mlflow.get_experiment_by_name("configured-here")
        assert experiment is not None
        with mlflow.start_run() as run:
            pass
        assert run.info.experiment_id == experiment.experiment_id  # new runs land in it
    finally:
        mlflow.set_tracking_uri(saved)
        mlflow.set_experiment(TRAINING_EXPERIMENT)


def test_the_router_reads_classes_and_plan_from_the_version(logged, configured_registry: str) -> None:
    """The router's MLflow source on a real PyCaret pipeline: labels and numbers it refuses, the plan it adopts."""
    from contracts.api import ExperimentPlan
    from serving.errors import InvalidFeatures, InvalidLabel
    from serving.services.models import ModelSource

    plan = ExperimentPlan(
        champion_version="1", challenger_version=str(logged.version), alpha=0.05, power=0.8, mde=0.05,
        baseline=0.9, min_samples_per_arm=1750, fixed_horizon_samples_per_arm=906, ab_split_b=0.5,
        max_duration_hours=72.0, loop_id="loop-x",
    )  # fmt: skip
    registry.tag_version("Logged", logged.version, plan_tags(plan))
    source = ModelSource(mlflow.get_tracking_uri(), "Logged")
    source.open()
    try:
        served = source.load(str(logged.version))
        assert served.classes == frozenset({"setosa", "versicolor", "virginica"})
        assert served.check_label("virginica") == "virginica"
        with pytest.raises(InvalidLabel):
            served.check_label("rose")
        row = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
        assert served.predict(served.check(row, max_abs=3.4e38)) == "setosa"
        with pytest.raises(InvalidFeatures, match="out of range"):
            served.check({**row, "petal_width": 1e300}, max_abs=3.4e38)
        assert source.plan(str(logged.version)) == plan  # the tags round-trip to the same plan
    finally:
        source.close()
