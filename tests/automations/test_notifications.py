"""Notifications and silence alerts, applied to a real Prefect server, delivered to a real local webhook.

Each automation is applied from `automations/` as `python -m automations.apply` does (twice: re-applying changes
nothing). The webhook is an HTTP server on 127.0.0.1 in this process; the Prefect server's automation service sends to
it through the `driftloop-notify` notification block, exactly as it would to Slack.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prefect import flow, tags
from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.events import emit_event

from automations.apply import Wiring, apply, build, definitions
from automations.settings import AutomationSettings
from contracts import events
from tests.automations.test_triggers import deployments  # noqa: F401  (the deployments the automations name)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


class Webhook:
    """A local HTTP endpoint that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("content-length", 0))
                received.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, text: str, timeout: float = 20.0) -> dict:
        """The first message whose subject contains `text`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((m for m in self.received if text in m.get("subject", "")), None)
            if found is not None:
                return found
            time.sleep(0.2)
        raise AssertionError(f"no notification about {text!r} within {timeout} s; got {self.received}")

    def about(self, text: str) -> list[dict]:
        return [m for m in self.received if text in m.get("subject", "")]


@pytest.fixture(scope="module")
def webhook(deployments) -> Iterator[Webhook]:  # noqa: F811
    """The webhook, with every automation applied twice to send to it."""
    hook = Webhook()
    settings = AutomationSettings(_env_file=None, notify_webhook_url=hook.url)
    first, second = apply(settings=settings), apply(settings=settings)
    assert [a.id for a in first] == [a.id for a in second]  # updated in place, not created again
    time.sleep(1.0)  # the trigger service learns of new and updated automations asynchronously
    yield hook
    hook.server.shutdown()


def model() -> str:
    return f"Notify{uuid.uuid4().hex[:8]}"


def about(model_name: str, name: str, payload: dict, version: str = "2") -> None:
    emit_event(
        event=name,
        resource=events.model_resource(model_name),
        related=[events.model_version_resource(model_name, version)],
        payload=payload,
    )


def test_reapplying_changes_nothing(webhook):
    settings = AutomationSettings(_env_file=None, notify_webhook_url=webhook.url)
    before = {a.name: a.model_dump(exclude={"id"}) for a in (Automation.read(name=n) for n in _names())}
    apply(settings=settings)
    after = {a.name: a.model_dump(exclude={"id"}) for a in (Automation.read(name=n) for n in _names())}
    assert after == before


def _names() -> list[str]:
    return [definition["name"] for _, definition in definitions()]


def test_a_candidate_rejected_by_the_gate_is_notified(webhook):
    name = model()
    payload = events.RejectedPayload(
        model_name=name, version="4", run_id="r1", reason="holdout F1 0.600 below the floor 0.7", loop_id="loop-9"
    )
    about(name, events.MODEL_REJECTED, payload.model_dump(mode="json"), version="4")
    message = webhook.wait_for(f"{name} v4 rejected by the quality gate")
    assert "holdout F1 0.600 below the floor 0.7" in message["body"] and "loop-9" in message["body"]
    assert message["text"] == f"{message['subject']}\n{message['body']}"


def decision(name: str, kind: str, reason: str) -> dict:
    return events.DecisionPayload(
        model_name=name, decision_id="d1", loop_id="loop-1", experiment_id="v1-vs-v2", decision=kind,
        champion_version="1", challenger_version="2", p_value=None, reason=reason, champion_labelled=10,
        champion_correct=5, challenger_labelled=10, challenger_correct=5, report_url="http://mlflow/run",
    ).model_dump(mode="json")  # fmt: skip


def test_an_invalid_experiment_is_notified(webhook):
    name = model()
    about(name, events.EXPERIMENT_INVALID, decision(name, "INVALID", "sample ratio mismatch on assigned users"))
    message = webhook.wait_for(f"experiment v1-vs-v2 of {name} is INVALID")
    assert "sample ratio mismatch on assigned users" in message["body"]


def test_invalid_traffic_is_notified(webhook):
    name = model()
    payload = events.DataInvalidPayload(
        model_name=name, champion_version="3", errors=["column 'petal_width' is absent from the window"],
        absent_columns=["petal_width"], wrong_type_columns=[], extra_columns=[], window_start="t0", window_end="t1",
        window_rows=120, report_url="http://mlflow/run",
    ).model_dump(mode="json")  # fmt: skip
    about(name, events.DATA_INVALID, payload, version="3")
    message = webhook.wait_for(f"traffic of {name} v3 fails the schema")
    assert "column 'petal_width' is absent from the window" in message["body"] and "120 requests" in message["body"]


def test_an_infeasible_plan_is_notified(webhook):
    name = model()
    payload = events.InfeasiblePayload(
        model_name=name, champion_version="1", challenger_version="2", min_samples_per_arm=4000, expected_hours=310.5,
        max_duration_hours=72.0, feasibility="infeasible", loop_id="l1",
    ).model_dump(mode="json")  # fmt: skip
    about(name, events.EXPERIMENT_INFEASIBLE, payload, version="2")
    message = webhook.wait_for(f"the experiment of {name} v2 cannot finish in time")
    assert "4000 labelled outcomes per arm need about 310.5 h, the maximum is 72.0 h" in message["body"]


@pytest.mark.parametrize("event", [events.MODEL_ROLLED_BACK, events.CONTROL_ROLLBACK, events.MODEL_WATCH_REGRESSED])
def test_every_rollback_is_notified(webhook, event):
    name = model()
    if event == events.MODEL_ROLLED_BACK:
        payload = decision(name, "ROLLBACK", "challenger worse")
    elif event == events.MODEL_WATCH_REGRESSED:
        payload = events.WatchPayload(
            model_name=name, version="2", previous_version="1", accuracy=0.71, cs_upper=0.78, threshold=0.8,
            expected_accuracy=0.9, scored=900, elapsed_hours=5.0, reason="below its promise", decision_id="d2",
            loop_id="l1",
        ).model_dump(mode="json")  # fmt: skip
    else:
        payload = events.ControlPayload(
            model_name=name, action="rollback", requested_by="alice", reason="refunds misrouted", version="1",
            previous_version="2", decision_id="d1", loop_id="",
        ).model_dump(mode="json")  # fmt: skip
    about(name, event, payload)
    message = webhook.wait_for(f"{name} rolled back ({event})")
    assert payload["reason"] in message["body"]


def test_a_failed_driftloop_flow_run_is_notified_and_an_untagged_one_is_not(webhook):
    suffix = uuid.uuid4().hex[:8]

    @flow(name=f"doomed-{suffix}", flow_run_name=f"doomed-{suffix}")
    def doomed() -> None:
        raise RuntimeError("boom")

    @flow(name=f"other-{suffix}", flow_run_name=f"other-{suffix}")
    def other() -> None:
        raise RuntimeError("boom")

    with tags("driftloop"), pytest.raises(RuntimeError):
        doomed()
    with pytest.raises(RuntimeError):
        other()
    message = webhook.wait_for(f"flow run doomed-{suffix} Failed")
    assert f"doomed-{suffix}" in message["body"]
    time.sleep(2.0)
    assert webhook.about(f"other-{suffix}") == []


def test_without_a_webhook_the_notify_deployment_runs_with_the_rendered_message(webhook, deployments):  # noqa: F811
    settings = AutomationSettings(_env_file=None, notify_webhook_url=None)
    try:
        apply(settings=settings)
        time.sleep(1.0)
        name = model()
        payload = events.RejectedPayload(model_name=name, version="7", run_id="r", reason="too slow", loop_id="l")
        about(name, events.MODEL_REJECTED, payload.model_dump(mode="json"), version="7")
        deadline = time.monotonic() + 20
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployments["notify/notify"]]))
                )
                mine = [r for r in runs if name in r.parameters.get("subject", "")]
                if mine:
                    break
                time.sleep(0.3)
        assert mine, "the notify deployment was not run"
        assert mine[0].parameters["subject"] == f"driftloop: {name} v7 rejected by the quality gate"
        assert "too slow" in mine[0].parameters["body"]
    finally:
        # Back to the webhook for the other tests of this module.
        apply(settings=AutomationSettings(_env_file=None, notify_webhook_url=webhook.url))
        time.sleep(1.0)


def test_the_notify_flow_logs_the_message_as_a_warning(caplog):
    from flows.notify import notify

    with caplog.at_level("WARNING"):
        message = notify(subject="driftloop: test", body="details")
    assert message == "NOTIFICATION: driftloop: test\ndetails"
    assert any(r.levelname == "WARNING" and r.getMessage() == message for r in caplog.records)


@pytest.mark.parametrize(
    "file,event,subject",
    [
        ("silence_drift.yaml", events.DRIFT_CHECKED, "no drift check for"),
        ("silence_traffic.yaml", events.ROUTER_TRAFFIC, "no traffic for"),
    ],
    ids=["drift-monitor", "router-traffic"],
)
def test_silence_is_an_alert_and_steady_reports_are_not(webhook, file, event, subject):
    definition = next(d for p, d in definitions() if p.name == file)
    block = Automation.read(name=definition["name"]).actions[0].block_document_id
    automation = build(
        definition | {"name": f"{definition['name']}-test"},
        Wiring(deployment_ids={}, notify_block_id=block, silence_seconds={"drift": 10.0, "traffic": 10.0}),
    ).create()
    try:
        time.sleep(1.0)
        quiet, steady = model(), model()
        payload = {"model_name": "x", "requests": 3}  # the trigger reads the event name and resource only
        # `steady` reports every 3 s for 24 s; `quiet` reports twice, then falls silent.
        for i in range(8):
            about(steady, event, payload)
            if i < 2:
                about(quiet, event, payload)
            time.sleep(3.0)
        message = webhook.wait_for(f"{subject} {quiet}", timeout=30)
        assert f"driftloop.model.{quiet}" in message["body"]
        assert webhook.about(f"{subject} {steady}") == []
    finally:
        automation.delete()
