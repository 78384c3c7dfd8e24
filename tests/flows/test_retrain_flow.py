"""The retrain flow on real parts: the scheduled deployment from prefect.yaml, a Prefect test server, an MLflow SQLite
registry, the router over HTTP with an inference log of known timestamps, and real PyCaret training on small data.

The scheduled deployment is created by `prefect deploy` from prefect.yaml. The test server runs no scheduler, so its
run is created from the deployment as the scheduler would (the deployment's parameters, no overrides) and executed
in-process; it goes through the same window, training, gate and registration as a drift-triggered run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pandas as pd
import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.exceptions import ObjectAlreadyExists

from contracts.registry import (
    CHALLENGER,
    CHAMPION,
    GATE_ARTIFACT_DIR,
    GATE_EVIDENCE_FILE,
    GATE_HOLDOUT_FILE,
    ROW_ID,
    ROW_SOURCE,
    TAG_DATA_HASH,
    TAG_DATA_ROWS,
    TAG_FLOW_RUN_ID,
    TAG_FLOW_RUN_URL,
    TAG_GATE,
    TAG_ORIGINAL_RUN,
    TAG_TRIGGER,
    TAG_TRIGGER_EVENT,
    TAG_WINDOW,
    TRAINING_ARTIFACT_DIR,
    TRAINING_FILE,
    TRIGGER_SCHEDULE,
    WINDOW_FILE,
)
from flows.lib import registry
from flows.lib.data import IRIS_FEATURES, IRIS_TARGET
from flows.lib.gate import passes_gate
from flows.lib.window import ORIGINAL, TRAFFIC, original_rows
from flows.retrain import retrain
from flows.settings import get_settings
from flows.tasks import retrain_slot
from serving.services.store import InferenceRow
from tests.conftest import TRAINING_EXPERIMENT
from tests.flows.conftest import FlowerModel, Router

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

ROOT = Path(__file__).resolve().parents[2]
SCHEDULED = "retrain/retrain-scheduled"
WINDOW_DAYS = 1
SEEN = [f"drifted-{i:03d}" for i in range(60, 70)]
"""Requests of the window that the champion was trained on (in its training record)."""


@pytest.fixture(scope="module")
def scheduled_deployment(prefect_harness: str, tmp_path_factory: pytest.TempPathFactory) -> UUID:
    """`retrain-scheduled`, deployed from prefect.yaml by `prefect deploy` (as `make deploy` does)."""
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name="driftloop", type="process"))
        except ObjectAlreadyExists:
            pass
    env = os.environ | {
        "PREFECT_API_URL": prefect_harness,  # the harness does not export it to subprocesses
        "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-cli")),
        "DO_NOT_TRACK": "1",
    }
    prefect = Path(sys.executable).parent / "prefect"
    deployed = subprocess.run(
        [str(prefect), "--no-prompt", "deploy", "--name", "retrain-scheduled"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(SCHEDULED).id


def test_prefect_yaml_deploys_a_weekly_retrain_of_the_same_flow_recorded_as_schedule(scheduled_deployment: UUID):
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(scheduled_deployment)
        schedules = client.read_deployment_schedules(scheduled_deployment)

    assert deployment.entrypoint == "flows/retrain.py:retrain"
    assert deployment.parameters == {"trigger": TRIGGER_SCHEDULE}
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in schedules] == [("0 3 * * 1", "UTC", True)]
    assert deployment.global_concurrency_limit is not None and deployment.global_concurrency_limit.limit == 1


def test_the_demo_pauses_the_scheduled_retrain_unless_asked(scheduled_deployment: UUID):
    from deployments.settings import StackSettings
    from deployments.stack import Stack

    stack = Stack(StackSettings(_env_file=None), log=lambda message: None)

    def schedules() -> list[tuple[bool, float | None]]:
        with get_client(sync_client=True) as client:
            found = client.read_deployment_schedules(scheduled_deployment)
        return [(s.active, getattr(s.schedule, "interval", None)) for s in found]

    stack.set_retrain_schedule(0)
    assert [active for active, _ in schedules()] == [False]
    stack.set_retrain_schedule(90)
    assert schedules() == [(True, timedelta(seconds=90))]


# --- a scheduled run, end to end --------------------------------------------------------------------------------


def drifted_iris(iris: pd.DataFrame) -> pd.DataFrame:
    """Iris with petals measured 1.8 times too long (a unit change upstream): the champion gets many wrong."""
    return iris.assign(petal_length=iris.petal_length * 1.8, petal_width=iris.petal_width * 1.8)


def log_row(request_id: str, ts: datetime, row: pd.Series, *, labelled: bool = True) -> InferenceRow:
    return InferenceRow(
        request_id=request_id,
        ts=ts,
        user_id=f"user-{request_id}",
        arm="champion",
        model_name="IrisClassifier",
        model_version="1",
        experiment_id="v1",
        features={name: float(row[name]) for name in IRIS_FEATURES},
        prediction="setosa",
        label=str(row[IRIS_TARGET]) if labelled else None,
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
) -> Iterator[dict]:
    """A champion trained on iris and on ten requests of the window, and an inference log of known timestamps.

    The log: 120 labelled drifted requests over the last 20 hours (10 of them in the champion's training record),
    10 unlabelled ones, and 15 labelled ones older than the one-day window.
    """
    now = datetime.now(UTC)
    drifted = drifted_iris(iris).sample(frac=1.0, random_state=3).reset_index(drop=True)
    in_window = [log_row(f"drifted-{i:03d}", now - timedelta(minutes=10 * (i + 1)), drifted.loc[i]) for i in range(120)]
    unlabelled = [
        log_row(f"open-{i}", now - timedelta(hours=1, minutes=i), drifted.loc[i], labelled=False) for i in range(10)
    ]
    old = [log_row(f"old-{i:02d}", now - timedelta(hours=30 + i), drifted.loc[120 + i]) for i in range(15)]

    registry.configure(tracking_uri, TRAINING_EXPERIMENT)
    seen = pd.DataFrame([{**r.features, IRIS_TARGET: r.label} for r in in_window if r.request_id in SEEN])
    champion_rows = pd.concat(
        [original_rows(iris), original_rows(seen).assign(**{ROW_ID: SEEN, ROW_SOURCE: TRAFFIC})], ignore_index=True
    )
    champion = registry.log_candidate(
        pipeline=tiny_pipeline,
        train_data=iris,
        reference=iris,
        target=IRIS_TARGET,
        model_name=model_name,
        params={"model": "lr"},
        metrics={},
        run_name="champion",
        frames={f"{TRAINING_ARTIFACT_DIR}/{TRAINING_FILE}": champion_rows},
    )
    registry.move_alias(model_name, CHAMPION, "1", reason="bootstrap")

    router = start_router({"1": FlowerModel(), "2": FlowerModel()})
    store = router.store()
    for row in in_window + unlabelled + old:
        store.log.record(row)
    store.close()
    settings = {
        "MODEL_NAME": model_name,
        "RETRAIN_MODELS": '["lr", "dt"]',
        "RETRAIN_FOLDS": "2",
        "RETRAIN_CANDIDATES": "2",
        "RETRAIN_TUNE_ITERATIONS": "2",
        "RETRAIN_WINDOW_DAYS": str(WINDOW_DAYS),
        "GATE_RESAMPLES": "500",
    }
    for key, value in settings.items():
        monkeypatch.setenv(f"DRIFTLOOP_{key}", value)
    flow_env(router)
    yield {"router": router, "champion_run": champion.run_id, "in_window": in_window, "old": old}


def run_scheduled(deployment_id: UUID):
    """Create a run of the deployment as its schedule would (its own parameters) and run it in this process."""
    from prefect.flow_engine import run_flow

    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(deployment_id)
    assert flow_run.parameters == {"trigger": TRIGGER_SCHEDULE}
    return flow_run, run_flow(retrain, flow_run=flow_run, parameters=flow_run.parameters)


def artifact_frame(run_id: str, path: str) -> pd.DataFrame:
    return pd.read_parquet(MlflowClient().download_artifacts(run_id, path))


def artifact_json(run_id: str, path: str) -> dict:
    return json.loads(Path(MlflowClient().download_artifacts(run_id, path)).read_text())


def test_a_scheduled_run_trains_on_the_documented_window_and_goes_through_the_fair_gate(
    world: dict, scheduled_deployment: UUID, iris: pd.DataFrame, model_name: str
):
    flow_run, result = run_scheduled(scheduled_deployment)

    assert result["trigger"] == TRIGGER_SCHEDULE and result["version"] == "2"
    run = MlflowClient().get_run(result["run_id"])
    version = MlflowClient().get_model_version(model_name, "2")
    assert run.data.tags[TAG_TRIGGER] == version.tags[TAG_TRIGGER] == TRIGGER_SCHEDULE
    assert run.data.tags[TAG_ORIGINAL_RUN] == world["champion_run"]
    # Lineage in MLflow: the flow run that made the run, the data it trained on, the full leaderboard.
    assert run.data.tags[TAG_FLOW_RUN_ID] == str(flow_run.id) and run.data.tags[TAG_TRIGGER_EVENT] == ""
    assert run.data.tags[TAG_FLOW_RUN_URL].endswith(f"/runs/flow-run/{flow_run.id}")
    leaderboard = artifact_json(result["run_id"], "leaderboard.json")
    assert set(leaderboard["data"] and [row[0] for row in leaderboard["data"]]) >= {result["best_model"]}

    # The window holds exactly the rows the policy documents.
    training = artifact_frame(result["run_id"], f"{TRAINING_ARTIFACT_DIR}/{TRAINING_FILE}")
    holdout = artifact_frame(result["run_id"], f"{GATE_ARTIFACT_DIR}/{GATE_HOLDOUT_FILE}")
    window = artifact_json(result["run_id"], f"{TRAINING_ARTIFACT_DIR}/{WINDOW_FILE}")
    in_window = {r.request_id for r in world["in_window"]}  # labelled, logged within the last day
    holdout_ids, training_ids = set(holdout[ROW_ID]), set(training[ROW_ID])
    traffic_ids = set(training.loc[training[ROW_SOURCE] == TRAFFIC, ROW_ID])
    history_ids = set(training.loc[training[ROW_SOURCE] == ORIGINAL, ROW_ID])
    assert traffic_ids | holdout_ids == in_window and not traffic_ids & holdout_ids
    assert len(holdout_ids) == 33  # 30% of the 110 requests the champion never saw, rounded up
    assert history_ids <= set(original_rows(iris)[ROW_ID]) and len(history_ids) == 75  # half of the original 150
    assert (window["traffic"]["available"], window["traffic"]["rows"], window["traffic_seen_by_champion"]) == (
        120,
        87,
        10,
    )
    assert (window["history"]["rows"], window["holdout"]["rows"], window["training_rows"]) == (75, 33, 162)
    assert (run.data.tags[TAG_DATA_ROWS], run.data.tags[TAG_DATA_HASH]) == ("162", window["training_hash"])
    assert run.data.tags[TAG_WINDOW] == f"{window['traffic']['first_ts']}/{window['traffic']['last_ts']}"
    newest = max(r.ts for r in world["in_window"] if r.request_id in traffic_ids)
    assert datetime.fromisoformat(window["traffic"]["last_ts"]) == newest

    # The holdout shares no row with either model's training data.
    champion_training = artifact_frame(world["champion_run"], f"{TRAINING_ARTIFACT_DIR}/{TRAINING_FILE}")
    assert not holdout_ids & set(champion_training[ROW_ID])
    assert not holdout_ids & training_ids
    assert set(SEEN) <= traffic_ids  # the champion's traffic rows may train the candidate, never judge it

    # The decision follows from the evidence logged with the run.
    evidence = artifact_json(result["run_id"], f"{GATE_ARTIFACT_DIR}/{GATE_EVIDENCE_FILE}")
    f1 = evidence["f1"]
    assert f1["rows"] == 33 and f1["low"] <= f1["difference"] <= f1["high"]
    assert (evidence["passed"], evidence["reason"]) == passes_gate(
        evidence["candidate"],
        evidence["champion"],
        get_settings().gate_min_f1,
        candidate_ms=evidence["candidate_predict_ms_1row"],
        budget_ms=evidence["latency_budget_ms"],
        interval=(f1["low"], f1["high"]),
        max_loss=evidence["max_loss"],
    )
    assert version.tags[TAG_GATE] == ("passed" if evidence["passed"] else "failed")
    assert run.data.metrics["gate_f1_difference_low"] == pytest.approx(f1["low"])
    # The champion is wrong on most drifted flowers; the candidate learnt them: a clear pass, and the challenger.
    assert evidence["passed"] and f1["low"] > 0
    assert str(registry.get_version(model_name, CHALLENGER).version) == "2"

    # The Prefect artifact shows the trigger, the window, the tuning and the gate's evidence.
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]), key=ArtifactFilterKey(any_=["retrain-summary"])
            )
        )
    markdown = artifacts[0].data
    assert "Started by **schedule**" in markdown
    assert (
        "## Data window" in markdown
        and "| traffic | labelled requests (10 seen by the champion) | 120 | 87 |" in markdown
    )
    assert "## Tuning" in markdown and result["tuning"]["reason"] in markdown
    assert "## Quality gate" in markdown and f"[{f1['low']:+.3f}, {f1['high']:+.3f}]" in markdown


def test_a_retrain_skips_while_another_is_in_flight_or_a_challenger_is_under_test(
    tracking_uri: str, registered: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DRIFTLOOP_MLFLOW_TRACKING_URI", tracking_uri)
    get_settings.cache_clear()
    try:
        with retrain_slot(registered, wait_seconds=10) as held:
            assert held
            busy = retrain(model_name=registered, trigger="manual")
        # The slot is free again, but v2 is challenger: one candidate in flight, whatever the trigger.
        under_test = retrain(model_name=registered, trigger="schedule")
    finally:
        get_settings.cache_clear()

    assert busy == {"skipped": "another retrain of this model is running", "trigger": "manual"}
    assert under_test == {"skipped": f"v2 is already under A/B test as {CHALLENGER}", "trigger": "schedule"}


def test_a_drift_measured_against_an_earlier_champion_trains_nothing(
    tracking_uri: str, registered: str, monkeypatch: pytest.MonkeyPatch
):
    # A check that started before a promotion emits against the old champion (here v1 was champion when the drift
    # was measured, and a later version is champion now): the new champion was trained on that traffic.
    monkeypatch.setenv("DRIFTLOOP_MLFLOW_TRACKING_URI", tracking_uri)
    get_settings.cache_clear()
    client = MlflowClient(tracking_uri)
    champion = client.get_model_version_by_alias(registered, CHAMPION).version
    try:
        stale = retrain(
            model_name=registered, drift_share=0.5, drifted_columns=["petal_length"], drift_champion_version="99"
        )
    finally:
        get_settings.cache_clear()
    assert stale == {
        "skipped": f"the drift was measured against v99, but v{champion} is champion now: "
        "the next drift check measures against its reference",
        "trigger": "drift",
    }


def test_history_comes_from_the_original_run_and_seen_rows_from_the_champions_record(
    tracking_uri: str, model_name: str, iris: pd.DataFrame, tiny_pipeline
):
    """v1 is a bootstrap (its run holds the original rows); v2, a retrain, trained on half of them and two requests."""
    from flows.retrain import load_history

    registry.configure(tracking_uri, TRAINING_EXPERIMENT)
    original = original_rows(iris)
    retrained = pd.concat(
        [original.head(75), original_rows(iris.head(2)).assign(**{ROW_ID: ["req-a", "req-b"], ROW_SOURCE: TRAFFIC})]
    )
    logged = {}
    for version, rows, tags in (("1", original, {}), ("2", retrained, None)):
        tags = tags if tags is not None else {TAG_ORIGINAL_RUN: logged["1"]}
        logged[version] = registry.log_candidate(
            pipeline=tiny_pipeline,
            train_data=iris,
            reference=iris,
            target=IRIS_TARGET,
            model_name=model_name,
            params={},
            metrics={},
            tags=tags,
            run_name=f"v{version}",
            frames={f"{TRAINING_ARTIFACT_DIR}/{TRAINING_FILE}": rows},
        ).run_id
    registry.move_alias(model_name, CHAMPION, "2", reason="promoted")

    history = load_history.fn(model_name)

    assert history.run_id == logged["1"] and history.note == "" and history.seen_until is None
    pd.testing.assert_frame_equal(history.rows, original, check_dtype=False)
    assert history.seen_ids == frozenset(retrained[ROW_ID])


def test_a_champion_without_a_training_record_counts_every_earlier_request_as_seen(registered: str):
    from flows.retrain import load_history

    history = load_history.fn(registered)

    champion = registry.get_version(registered, CHAMPION)
    assert history.seen_until == datetime.fromtimestamp(champion.creation_timestamp / 1000, UTC)
    assert history.seen_ids == frozenset() and history.run_id == champion.run_id
    assert list(history.rows[ROW_ID].head(2)) == ["reference:0", "reference:1"] and len(history.rows) == 150
    assert "has no training record" in history.note
