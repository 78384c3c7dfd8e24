"""A version's drift calibration is made at registration and read back by the drift flow (real MLflow store)."""

from __future__ import annotations

import pandas as pd
import pytest

from contracts.registry import DRIFT_ARTIFACT_DIR, DRIFT_CALIBRATION_FILE, TAG_DRIFT_CALIBRATION
from flows.drift import load_calibration
from flows.lib import registry
from flows.lib.data import IRIS_FEATURES, IRIS_TARGET
from flows.lib.drift_policy import reference_sample
from flows.settings import FlowSettings
from flows.tasks import calibrate_drift


@pytest.fixture(scope="module")
def pipeline(iris: pd.DataFrame):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=300).fit(iris[IRIS_FEATURES], iris[IRIS_TARGET])


def test_registration_stores_the_calibration_and_the_flow_reads_it(
    configured_registry: str, iris: pd.DataFrame, pipeline
) -> None:
    settings = FlowSettings(_env_file=None, drift_calibration_resamples=300, drift_window_rows=200)
    calibrated = calibrate_drift(pipeline, iris, 0.97, settings)
    version = registry.log_candidate(
        pipeline=pipeline,
        train_data=iris,
        reference=iris,
        target=IRIS_TARGET,
        model_name="Calibrated",
        params={},
        metrics={},
        tags={TAG_DRIFT_CALIBRATION: calibrated.summary()},
        run_name="calibrated",
        documents={f"{DRIFT_ARTIFACT_DIR}/{DRIFT_CALIBRATION_FILE}": calibrated.as_dict()},
    )

    assert [c.window_rows for c in calibrated.calibrations] == [50, 100, 200]
    assert sum(calibrated.prediction_counts.values()) == 150 and calibrated.label_counts["setosa"] == 50
    assert version.tags[TAG_DRIFT_CALIBRATION] == calibrated.summary()
    assert load_calibration.fn(version.run_id, iris, settings) == calibrated


def test_a_version_without_one_is_calibrated_at_its_check(configured_registry: str, iris: pd.DataFrame) -> None:
    from sklearn.dummy import DummyClassifier

    settings = FlowSettings(_env_file=None, drift_calibration_resamples=200, drift_window_rows=100)
    version = registry.log_candidate(
        pipeline=DummyClassifier().fit(iris[IRIS_FEATURES], iris[IRIS_TARGET]),
        train_data=iris,
        reference=iris,
        target=IRIS_TARGET,
        model_name="Uncalibrated",
        params={},
        metrics={},
        run_name="uncalibrated",
    )
    calibrated = load_calibration.fn(version.run_id, iris, settings)
    assert [c.window_rows for c in calibrated.calibrations] == [50, 100]
    assert calibrated.prediction_counts == {} and calibrated.holdout_accuracy is None


def test_the_reference_is_a_seeded_sample_of_the_training_rows(iris: pd.DataFrame) -> None:
    sample = reference_sample(iris, 100, seed=3)
    assert len(sample) == 100 and sample.equals(reference_sample(iris, 100, seed=3))
    assert not sample.equals(reference_sample(iris, 100, seed=4))
    assert len(reference_sample(iris, 1000, seed=3)) == 150
