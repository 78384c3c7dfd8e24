"""Manual controls on a real Prefect test server, a real MLflow store and the real router app over HTTP.

Each control runs as a flow (in-process), through its deployment (a flow run created from the deployment, executed
as a worker would), and from the command line (`python -m flows.controls`, a subprocess); every one leaves its audit
record in the alias history (reason and who asked) and its `driftloop.control.*` event.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists
from prefect.flow_engine import run_flow

from contracts import events
from contracts.registry import CHALLENGER, CHAMPION, REQUESTED_BY_LOOP, TAG_DECISION
from flows import controls
from flows.lib import registry
from tests.conftest import read_events
from tests.flows.conftest import FlowerModel, Router

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def serving(registered: str, start_router: Callable[..., Router], flow_env) -> Router:
    """The router serving champion v1 and challenger v2, the flows pointed at it."""
    router = start_router({"1": FlowerModel(), "2": FlowerModel(), "3": FlowerModel()})
    flow_env(router)
    return router


def aliases(model_name: str) -> dict[str, str | None]:
    found = {alias: registry.get_version(model_name, alias) for alias in (CHAMPION, CHALLENGER)}
    return {alias: None if v is None else str(v.version) for alias, v in found.items()}


def last_moves(model_name: str, n: int) -> list[tuple[str, str, str, str]]:
    return [
        (m["alias"], m["from_version"], m["to_version"], m["requested_by"]) for m in registry.alias_history(model_name)
    ][-n:]


def control_events(model_name: str, action: str, expect: int = 1) -> list:
    return read_events(f"{events.RESOURCE_PREFIX}{model_name}", [f"{events.CONTROL_PREFIX}{action}"], expect=expect)


def served(router: Router) -> tuple[str | None, str | None]:
    health = router.http.get("/health").json()
    return health["champion_version"], health["challenger_version"]


def test_rollback_restores_the_champion_it_replaced_and_the_router_serves_it(serving, model_name):
    registry.promote(model_name, "2", reason="won its experiment")  # v2 replaced v1
    with serving.client() as client:
        client.reload_models()
    assert served(serving) == ("2", None)

    result = controls.rollback(reason="v2 misroutes refunds", requested_by="alice", model_name=model_name)

    assert aliases(model_name) == {CHAMPION: "1", CHALLENGER: None}
    assert last_moves(model_name, 1) == [("champion", "2", "1", "alice")]
    history = registry.alias_history(model_name)[-1]
    assert history["reason"] == "rollback: v2 misroutes refunds" and history["decision_id"] == result["decision_id"]
    from mlflow import MlflowClient

    assert MlflowClient().get_model_version(model_name, "2").tags[TAG_DECISION] == "rolled back: v2 misroutes refunds"
    assert served(serving) == ("1", None)  # told at once, not at the next refresh
    (event,) = control_events(model_name, "rollback")
    assert event.payload == result
    assert (result["version"], result["previous_version"], result["requested_by"]) == ("1", "2", "alice")


def test_rollback_needs_a_previous_champion_a_reason_and_who_asks(serving, model_name):
    with pytest.raises(LookupError, match="replaced no earlier champion"):
        controls.rollback(reason="why not", requested_by="alice", model_name=model_name)
    with pytest.raises(LookupError, match="has no version 9"):
        controls.rollback(reason="why not", requested_by="alice", model_name=model_name, to_version="9")
    with pytest.raises(ValueError, match="needs reason"):
        controls.rollback(reason=" ", requested_by="alice", model_name=model_name)
    assert aliases(model_name) == {CHAMPION: "1", CHALLENGER: "2"}


def test_promote_by_hand_ends_the_experiment_everywhere(serving, model_name):
    assert served(serving) == ("1", "2")
    result = controls.promote(version="2", reason="validated offline", requested_by="bob", model_name=model_name)
    assert aliases(model_name) == {CHAMPION: "2", CHALLENGER: None}
    assert last_moves(model_name, 2) == [("champion", "1", "2", "bob"), ("challenger", "2", "", "bob")]
    assert served(serving) == ("2", None)
    assert serving.http.get("/experiment").json()["status"] == "none"
    (event,) = control_events(model_name, "promote")
    assert event.payload == result and result["previous_version"] == "1"


def test_end_experiment_by_hand_keeps_the_champion(serving, model_name):
    result = controls.end_experiment(reason="not needed any more", requested_by="carol", model_name=model_name)
    assert aliases(model_name) == {CHAMPION: "1", CHALLENGER: None}
    assert last_moves(model_name, 1) == [("challenger", "2", "", "carol")]
    assert served(serving) == ("1", None)
    (event,) = control_events(model_name, "end")
    assert event.payload == result and result["previous_version"] == "2"


def run_through_deployment(control: Flow, function: str, *, requested_by: str, model_name: str) -> dict:
    """What the Prefect UI's "Run" does: a flow run of the control's deployment, executed as a worker executes it."""
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name="driftloop", type="process"))
        except ObjectAlreadyExists:
            pass
        deployment_id = client.create_deployment(
            flow_id=client.create_flow_from_name(control.name),
            name=control.name,
            entrypoint=f"flows/controls.py:{function}",
            work_pool_name="driftloop",
            parameter_openapi_schema=control.parameters.model_dump_for_openapi(),
            enforce_parameter_schema=True,
        )
        parameters = {"reason": "from the UI", "requested_by": requested_by, "model_name": model_name}
        flow_run = client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
    return run_flow(control, flow_run=flow_run, parameters=flow_run.parameters)


def test_a_control_through_its_deployment(serving, model_name):
    """What the Prefect UI's "Run" does: a flow run of the deployment, executed as a worker executes it."""
    registry.promote(model_name, "2", reason="won")
    result = run_through_deployment(controls.rollback, "rollback", requested_by="dana", model_name=model_name)
    assert aliases(model_name) == {CHAMPION: "1", CHALLENGER: None}
    assert last_moves(model_name, 1) == [("champion", "2", "1", "dana")]
    assert result["requested_by"] == "dana"


def test_the_command_line_runs_the_control_and_refuses_without_a_reason(serving, model_name, prefect_harness):
    registry.promote(model_name, "2", reason="won")
    env = os.environ | {
        "PREFECT_API_URL": prefect_harness,
        "DRIFTLOOP_MODEL_NAME": model_name,
    }
    refused = subprocess.run(
        [sys.executable, "-m", "flows.controls", "rollback"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert refused.returncode == 2 and "--reason" in refused.stderr
    assert aliases(model_name)[CHAMPION] == "2"

    done = subprocess.run(
        [sys.executable, "-m", "flows.controls", "--by", "erin", "rollback", "--to", "1", "--reason", "paged at 3am"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert aliases(model_name) == {CHAMPION: "1", CHALLENGER: None}
    assert last_moves(model_name, 1) == [("champion", "2", "1", "erin")]
    assert served(serving) == ("1", None)


def test_automatic_moves_are_recorded_as_the_loops(serving, model_name):
    assert {m["requested_by"] for m in registry.alias_history(model_name)} == {REQUESTED_BY_LOOP}


def test_retrain_now_starts_the_retrain_deployment_as_a_manual_trigger(model_name):
    from flows.retrain import retrain

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name="driftloop", type="process"))
        except ObjectAlreadyExists:
            pass
        client.create_deployment(
            flow_id=client.create_flow_from_name(retrain.name),
            name="retrain",
            entrypoint="flows/retrain.py:retrain",
            work_pool_name="driftloop",
            parameter_openapi_schema=retrain.parameters.model_dump_for_openapi(),
            enforce_parameter_schema=True,
        )
    result = controls.retrain_now(reason="audit labels arrived", requested_by="frank", model_name=model_name)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(result["flow_run_id"])
    assert run.parameters == {"model_name": model_name, "trigger": "manual", "force": False}
    assert "manual" in run.tags
    (event,) = control_events(model_name, "retrain")
    assert event.payload["requested_by"] == "frank" and event.payload["reason"] == "audit labels arrived"


def test_pause_and_resume_by_hand_keep_the_challenger_audited_with_their_events(serving, model_name):
    assert served(serving) == ("1", "2")
    paused = controls.pause_experiment(reason="labels stopped", requested_by="gina", model_name=model_name)
    assert aliases(model_name) == {CHAMPION: "1", CHALLENGER: "2"}  # nothing moves
    assert serving.http.get("/experiment").json()["status"] == "paused"
    assert served(serving) == ("1", "2")  # the challenger stays loaded, it just gets no users
    history = registry.alias_history(model_name)[-1]
    assert (history["alias"], history["from_version"], history["to_version"], history["requested_by"]) == (
        CHALLENGER, "2", "2", "gina",
    )  # fmt: skip
    assert history["reason"] == "experiment paused: labels stopped" and history["decision_id"] == paused["decision_id"]

    resumed = controls.resume_experiment(reason="label feed fixed", requested_by="gina", model_name=model_name)
    assert serving.http.get("/experiment").json()["status"] == "running"
    assert registry.alias_history(model_name)[-1]["reason"] == "experiment resumed: label feed fixed"
    (pause_event,) = control_events(model_name, "pause")
    (resume_event,) = control_events(model_name, "resume")
    assert pause_event.payload == paused and resume_event.payload == resumed
    assert (paused["version"], paused["requested_by"]) == ("2", "gina")


def test_pause_through_its_deployment_and_from_the_command_line(serving, model_name, prefect_harness):
    result = run_through_deployment(controls.pause_experiment, "pause_experiment", requested_by="hal",
                                    model_name=model_name)  # fmt: skip
    assert result["requested_by"] == "hal" and serving.http.get("/experiment").json()["status"] == "paused"

    env = os.environ | {"PREFECT_API_URL": prefect_harness, "DRIFTLOOP_MODEL_NAME": model_name}
    done = subprocess.run(
        [sys.executable, "-m", "flows.controls", "--by", "ivy", "resume", "--reason", "cause found"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert serving.http.get("/experiment").json()["status"] == "running"
    assert registry.alias_history(model_name)[-1]["requested_by"] == "ivy"


def test_pause_without_an_experiment_says_so(serving, model_name):
    controls.end_experiment(reason="done", requested_by="jo", model_name=model_name)
    with pytest.raises(LookupError, match="no experiment to pause"):
        controls.pause_experiment(reason="why", requested_by="jo", model_name=model_name)
