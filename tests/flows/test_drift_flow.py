"""The drift flow end to end on a real Prefect test server, a real MLflow store and the real router's inference log:
no drift stays quiet, a shift needs two checks in a row, an absent column is `driftloop.data.invalid`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from contracts import events
from contracts.registry import CHAMPION, DRIFT_ARTIFACT_DIR, DRIFT_CALIBRATION_FILE, TAG_KIND, TAG_LOOP_ID
from flows.drift import drift
from flows.lib import registry
from flows.lib.data import IRIS_FEATURES, IRIS_TARGET
from flows.lib.drift_calibration import calibrate_version
from serving.services.store import InferenceRow
from tests.conftest import TRAINING_EXPERIMENT, read_events
from tests.flows.conftest import FlowerModel, Router

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def row(i: int, ts: datetime, features: dict, prediction: str) -> InferenceRow:
    return InferenceRow(
        request_id=f"req-{ts.timestamp():.0f}-{i}",
        ts=ts,
        user_id=f"user-{i}",
        arm="champion",
        model_name="IrisClassifier",
        model_version="1",
        experiment_id="v1",
        features=features,
        prediction=prediction,
        label=None,
        latency_ms=2.0,
    )


@pytest.fixture
def world(
    tracking_uri: str,
    model_name: str,
    iris: pd.DataFrame,
    tiny_pipeline,
    start_router: Callable[..., Router],
    flow_env: Callable[[Router], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[pd.DataFrame, int], None]]:
    """A champion on iris with its calibration stored as registration stores it; returns a writer of log rows."""
    registry.configure(tracking_uri, TRAINING_EXPERIMENT)
    calibrated = calibrate_version(
        iris,
        target=IRIS_TARGET,
        predictions=tiny_pipeline.predict(iris[IRIS_FEATURES]),
        holdout_accuracy=0.95,
        min_rows=50,
        window_rows=150,
        budget=0.05,
        period_checks=720,
        consecutive=2,
        resamples=1000,
        seed=1,
    )
    registry.log_candidate(
        pipeline=tiny_pipeline,
        train_data=iris,
        reference=iris,
        target=IRIS_TARGET,
        model_name=model_name,
        params={},
        metrics={},
        run_name="champion",
        documents={f"{DRIFT_ARTIFACT_DIR}/{DRIFT_CALIBRATION_FILE}": calibrated.as_dict()},
    )
    registry.move_alias(model_name, CHAMPION, "1", reason="bootstrap")
    router = start_router({"1": FlowerModel()})
    for key, value in {"MODEL_NAME": model_name, "DRIFT_WINDOW_ROWS": "150", "DRIFT_CONSECUTIVE": "2"}.items():
        monkeypatch.setenv(f"DRIFTLOOP_{key}", value)
    flow_env(router)
    minutes = [50]

    def write(frame: pd.DataFrame) -> None:
        """Log the frame's rows as requests, each batch newer than the last."""
        minutes[0] -= 5
        ts = datetime.now(UTC) - timedelta(minutes=minutes[0])
        # What the champion would serve (prediction drift compares with its predictions on the reference).
        served = tiny_pipeline.predict(frame.reindex(columns=IRIS_FEATURES).fillna(0.0))
        store = router.store()
        for i, (_, values) in enumerate(frame.iterrows()):
            features = {k: float(v) for k, v in values.items() if pd.notna(v)}
            store.log.record(row(i, ts + timedelta(milliseconds=i), features, str(served[i])))
        store.close()

    yield write


def test_no_drift_is_quiet_and_a_shift_needs_two_checks_in_a_row(world, iris: pd.DataFrame, model_name: str) -> None:
    features = iris[IRIS_FEATURES]
    world(features.sample(150, replace=True, random_state=1))
    quiet = drift(model_name=model_name)
    assert (quiet["severity"], quiet["detected"], quiet["alarmed_columns"]) == ("none", False, [])

    shifted = features.sample(150, replace=True, random_state=2).assign(petal_length=lambda f: f.petal_length + 1.5)
    world(shifted)
    first = drift(model_name=model_name)
    assert "petal_length" in first["alarmed_columns"]
    assert (first["severity"], first["detected"], first["drifted_columns"]) == ("none", False, [])

    world(features.sample(150, replace=True, random_state=3).assign(petal_length=lambda f: f.petal_length + 1.5))
    second = drift(model_name=model_name)
    assert second["detected"] is True
    assert (second["severity"], second["reason"], second["drifted_columns"]) == (
        "warning",
        events.REASON_FEATURE_DRIFT,
        ["petal_length"],
    )
    assert second["loop_id"] and second["report"].endswith(".html")

    resource = events.model_resource(model_name)["prefect.resource.id"]
    detected = read_events(resource, [events.DRIFT_DETECTED], expect=1)
    checked = read_events(resource, [events.DRIFT_CHECKED], expect=3)
    assert [e.payload["loop_id"] for e in detected] == [second["loop_id"]]
    assert [e.payload["severity"] for e in checked] == ["none", "none", "warning"]
    assert set(events.DriftPayload.model_fields) == set(checked[0].payload)

    runs = mlflow.search_runs(
        [MlflowClient().get_experiment_by_name(TRAINING_EXPERIMENT).experiment_id],
        filter_string=f"tags.`{TAG_KIND}` = 'drift'",
        output_format="list",
    )
    assert sorted(r.data.tags[TAG_LOOP_ID] for r in runs) == sorted(["", "", second["loop_id"]])
    # What was read and what the drift tests ran on: the whole 150-row window, below the sample size.
    assert {(r.data.metrics["window_rows"], r.data.metrics["window_sample_rows"]) for r in runs} == {(150, 150)}


def test_an_absent_column_is_invalid_data_and_gives_no_verdict(world, iris: pd.DataFrame, model_name: str) -> None:
    world(iris[IRIS_FEATURES].drop(columns=["petal_width"]).sample(100, replace=True, random_state=1))
    result = drift(model_name=model_name)

    assert result["invalid"] is True and result["absent_columns"] == ["petal_width"]
    resource = events.model_resource(model_name)["prefect.resource.id"]
    invalid = read_events(resource, [events.DATA_INVALID], expect=1)
    assert [e.payload["absent_columns"] for e in invalid] == [["petal_width"]]
    assert read_events(resource, [events.DRIFT_CHECKED, events.DRIFT_DETECTED], expect=0, timeout=1) == []
