"""The automations, applied to a real Prefect server, turn the loop's events into deployment runs with typed parameters.

The deployments they name are created as `prefect deploy` would (same flow, name, entrypoint, pool and parameter
schema, enforced), without a worker: a triggered run only has to be created, and its parameters are what it would
run with.
"""

from __future__ import annotations

import time
import uuid
from uuid import UUID

import pytest
from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.events import emit_event
from prefect.exceptions import ObjectAlreadyExists
from pydantic import BaseModel

from automations.apply import apply, definitions
from contracts import events
from flows.ab_evaluation import ab_evaluation
from flows.notify import notify
from flows.retrain import retrain

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

POOL = "driftloop"
DEPLOYMENTS: dict[str, tuple[Flow, str]] = {
    "retrain/retrain": (retrain, "flows/retrain.py:retrain"),
    "ab-evaluation/ab-evaluation": (ab_evaluation, "flows/ab_evaluation.py:ab_evaluation"),
    "notify/notify": (notify, "flows/notify.py:notify"),
}


@pytest.fixture(scope="module")
def deployments(prefect_harness: str) -> dict[str, UUID]:
    """The deployments the automations name, as `prefect deploy --all` creates them; id by `flow/name`."""
    ids = {}
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        except ObjectAlreadyExists:
            pass
        for full_name, (flow, entrypoint) in DEPLOYMENTS.items():
            ids[full_name] = client.create_deployment(
                flow_id=client.create_flow_from_name(flow.name),
                name=full_name.split("/")[1],
                entrypoint=entrypoint,
                work_pool_name=POOL,
                parameter_openapi_schema=flow.parameters.model_dump_for_openapi(),
                enforce_parameter_schema=True,  # a templated parameter of the wrong type is refused
            )
    return ids


@pytest.fixture(scope="module")
def applied(deployments: dict[str, UUID]) -> list[list]:
    """Every automation applied twice, as a re-run of `python -m automations.apply` would; what each run returned."""
    rounds = [apply(), apply()]
    time.sleep(1.0)  # the trigger service learns of new and updated automations asynchronously
    return rounds


def emit(name: str, payload: BaseModel):
    """Emit one of the loop's events; returns it (its id is what a triggered run records)."""
    return emit_event(
        event=name, resource=events.model_resource(payload.model_name), payload=payload.model_dump(mode="json")
    )


def runs_of(deployment_id: UUID, model_name: str, *, expect: int, timeout: float = 15.0) -> list[FlowRun]:
    """Runs of a deployment for one model, once at least `expect` exist (or at the timeout)."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            found = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )
            mine = [run for run in found if run.parameters.get("model_name") == model_name]
            if len(mine) >= expect or time.monotonic() > deadline:
                return mine
            time.sleep(0.2)


def drift(model_name: str, **changes) -> events.DriftPayload:
    values = {
        "model_name": model_name,
        "champion_version": "3",
        "drift_share": 0.75,
        "drifted_columns": ["petal_length", "petal_width", "sepal_width"],
        "n_columns": 4,
        "window_start": "2026-01-01T00:00:00+00:00",
        "window_end": "2026-01-01T01:00:00+00:00",
        "window_rows": 300,
        "report": "/tmp/drift/report.html (mlflow run abc)",
        "report_url": "http://mlflow.local/#/experiments/1/runs/abc",
        "loop_id": uuid.uuid4().hex[:12],
    }
    return events.DriftPayload(**(values | changes))


def test_applying_twice_keeps_one_automation_per_name_pointing_at_its_deployment(applied, deployments):
    first, second = applied
    assert [a.id for a in second] == [a.id for a in first]  # updated in place, not created again
    # The automations that run a deployment of the loop (the notification ones are tested in test_notifications.py).
    expected = {d["name"]: d["actions"][0]["deployment"] for _, d in definitions() if d.get("actions")}
    with get_client(sync_client=True) as client:
        found = {name: client.read_automations_by_name(name) for name in expected}
    assert {name: len(automations) for name, automations in found.items()} == {name: 1 for name in expected}
    assert {name: automations[0].actions[0].deployment_id for name, automations in found.items()} == {
        name: deployments[target] for name, target in expected.items()
    }
    assert all(automations[0].enabled for automations in found.values())


def test_drift_detected_runs_retrain_with_the_payload_as_typed_parameters(applied, deployments):
    model_name = f"IrisTrig{uuid.uuid4().hex[:8]}"
    retrain_id = deployments["retrain/retrain"]
    # The same payload under the name every drift check emits: it must not start a retrain.
    emit(events.DRIFT_CHECKED, drift(model_name, drift_share=0.25, drifted_columns=["sepal_width"]))
    assert runs_of(retrain_id, model_name, expect=1, timeout=2.0) == []

    payload = drift(model_name)
    event = emit(events.DRIFT_DETECTED, payload)
    runs = runs_of(retrain_id, model_name, expect=1)

    assert len(runs) == 1
    assert runs[0].parameters == {
        "model_name": model_name,
        "drift_share": 0.75,
        "drifted_columns": ["petal_length", "petal_width", "sepal_width"],
        "report_url": "http://mlflow.local/#/experiments/1/runs/abc",
        "loop_id": payload.loop_id,
        "trigger": "drift",
        "trigger_event_id": str(event.id),
        "drift_champion_version": "3",
    }
    assert type(runs[0].parameters["drift_share"]) is float
    assert type(runs[0].parameters["drift_champion_version"]) is str  # a version is a string, even "3"


def test_retrain_runs_once_per_model_within_its_window(applied, deployments):
    retrain_id = deployments["retrain/retrain"]
    model_name, other = f"IrisTrig{uuid.uuid4().hex[:8]}", f"IrisTrig{uuid.uuid4().hex[:8]}"
    emit(events.DRIFT_DETECTED, drift(model_name, loop_id="first"))
    emit(events.DRIFT_DETECTED, drift(model_name, loop_id="again"))  # within the 300 s window: no second run
    emit(events.DRIFT_DETECTED, drift(other, loop_id="other"))  # another model: its own run

    assert [r.parameters["loop_id"] for r in runs_of(retrain_id, other, expect=1)] == ["other"]
    assert len(runs_of(retrain_id, model_name, expect=1, timeout=30.0)) == 1
    # Give a second run time to appear if the window failed to dedupe (a loaded CI machine is slow to act).
    runs = runs_of(retrain_id, model_name, expect=2, timeout=5.0)
    # The trigger service may take the two quick events in either order: the one it takes first fires.
    assert len(runs) == 1 and runs[0].parameters["loop_id"] in {"first", "again"}


def test_sample_reached_runs_ab_evaluation_for_that_model(applied, deployments):
    model_name = f"IrisTrig{uuid.uuid4().hex[:8]}"
    payload = events.SampleReachedPayload(
        model_name=model_name,
        experiment_id="v3-vs-v4",
        champion_version="3",
        challenger_version="4",
        min_samples_per_arm=175,
        champion_labelled=180,
        challenger_labelled=176,
    )
    emit(events.EXPERIMENT_SAMPLE_REACHED, payload)

    runs = runs_of(deployments["ab-evaluation/ab-evaluation"], model_name, expect=1)

    assert [r.parameters for r in runs] == [{"model_name": model_name}]
    # The trigger service has acted on the event (the run above exists): a retrain it wrongly matched would have been
    # created with it. Poll long enough for a slow, loaded server to show one.
    assert runs_of(deployments["retrain/retrain"], model_name, expect=1, timeout=10.0) == []


def test_a_guardrail_breach_runs_ab_evaluation_for_that_model(applied, deployments):
    model_name = f"IrisGuard{uuid.uuid4().hex[:8]}"
    payload = events.GuardrailBreachedPayload(
        model_name=model_name,
        experiment_id="v3-vs-v4",
        champion_version="3",
        challenger_version="4",
        guardrail="error_rate",
        detail="BREACHED: error rate 0.5000 vs champion 0.0000",
        champion_requests=40,
        champion_errors=0,
        challenger_requests=40,
        challenger_errors=20,
    )
    emit(events.EXPERIMENT_GUARDRAIL_BREACHED, payload)

    runs = runs_of(deployments["ab-evaluation/ab-evaluation"], model_name, expect=1)

    assert [r.parameters for r in runs] == [{"model_name": model_name}]
