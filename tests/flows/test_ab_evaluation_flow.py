"""The ab_evaluation flow in-process on real parts: Prefect test server, MLflow SQLite registry, the router over HTTP.

Each test registers versions 1 (champion) and 2 (challenger), serves them through the real router with stub models
of a chosen behaviour, gives the router a plan, sends labelled traffic from users the assignment hash puts on the
arm wanted, runs the flow once and checks everything it touched: registry aliases, tags and history, the router,
the reports, the MLflow run and the Prefect events.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from contracts import events
from contracts.registry import (
    AB_EXPERIMENT,
    CHALLENGER,
    CHAMPION,
    TAG_DECISION,
    TAG_DECISION_ID,
    TAG_PREVIOUS_CHAMPION,
    TAG_REPLACED_BY,
    plan_tags,
)
from flows.ab_evaluation import ab_evaluation
from flows.lib import registry
from flows.lib.artifacts import loop_chain
from tests.conftest import read_events
from tests.flows.conftest import FlowerModel, Router, make_plan

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

EXPERIMENT = "v1-vs-v2"
DECISION_EVENTS = [
    events.EXPERIMENT_DECIDED,
    events.MODEL_PROMOTED,
    events.MODEL_ROLLED_BACK,
    events.EXPERIMENT_INVALID,
]
SETUP_MOVES = [("champion", "", "1", ""), ("challenger", "", "2", "")]


@pytest.fixture
def experiment(
    registered: str, start_router: Callable[..., Router], flow_env: Callable[[Router], Path]
) -> Callable[..., tuple[Router, Path]]:
    """Start the router on the registered versions with these stubs, give it the plan, point the flows at it."""

    def start(champion: FlowerModel, challenger: FlowerModel, **plan: object) -> tuple[Router, Path]:
        # The retrain flow tags the challenger with its plan (the source of truth), then sends it to the router.
        registry.tag_version(registered, "2", plan_tags(make_plan(**plan)))
        router = start_router({"1": champion, "2": challenger})
        with router.client() as client:
            assert client.experiment().status == "running"
            assert client.experiment().plan == make_plan(**plan)  # adopted from the tags at the start
            client.set_plan(make_plan(**plan))  # the same plan again: harmless
        return router, flow_env(router)

    return start


def aliases(model_name: str) -> dict[str, str | None]:
    found = {alias: registry.get_version(model_name, alias) for alias in (CHAMPION, CHALLENGER)}
    return {alias: None if v is None else str(v.version) for alias, v in found.items()}


def moves(model_name: str) -> list[tuple[str, str, str, str]]:
    return [
        (m["alias"], m["from_version"], m["to_version"], m["decision_id"]) for m in registry.alias_history(model_name)
    ]


def health(router: Router) -> dict:
    return router.http.get("/health").json()


def ended(router: Router) -> tuple[str | None, str | None]:
    """How the router's record of the experiment ended: (decision, reason), or (None, None) while it runs."""
    store = router.store()
    try:
        row = store.experiments.get(EXPERIMENT)
    finally:
        store.close()
    assert row is not None and row.started_at is not None
    return row.end_decision, row.end_reason


def expected_payload(result: dict, model_name: str) -> dict:
    arms = result["evidence"]["arms"]
    return {
        "model_name": model_name,
        "decision_id": result["decision_id"],
        "loop_id": "loop-1",
        "experiment_id": EXPERIMENT,
        "decision": result["decision"],
        "champion_version": "1",
        "challenger_version": "2",
        "p_value": result["evidence"]["primary"]["always_valid_p"],
        "reason": result["reason"],
        "champion_labelled": arms["champion"]["labelled"],
        "champion_correct": arms["champion"]["correct"],
        "challenger_labelled": arms["challenger"]["labelled"],
        "challenger_correct": arms["challenger"]["correct"],
        "report_url": result["run_url"],
    }


def assert_look_recorded(result: dict, model_name: str, home: Path) -> None:
    """The JSON report, latest.json, the plot, and one MLflow run in driftloop-ab with both as artifacts."""
    folder = home / "reports" / "ab" / EXPERIMENT
    report, latest, plot = Path(result["report"]), Path(result["latest"]), Path(result["plot"])
    assert (latest, report.parent, plot.parent) == (folder / "latest.json", folder, folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted([report.name, "latest.json", plot.name])
    assert plot.suffix == ".png" and plot.read_bytes().startswith(b"\x89PNG")
    written = json.loads(latest.read_text())
    assert json.loads(report.read_text()) == written
    assert written == {
        "decision_id": result["decision_id"],
        "loop_id": "loop-1",
        "model_name": model_name,
        "experiment_id": EXPERIMENT,
        "at": written["at"],
        "decision": result["decision"],
        "reason": result["reason"],
        "what_would_change": result["what_would_change"],
        "evidence": result["evidence"],
    }

    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(AB_EXPERIMENT).experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert result["run_url"] == f"mlflow run {run.info.run_id}"
    tags = {k: run.data.tags[k] for k in ("experiment_id", "decision", "decision_id", "loop_id", "model_name")}
    assert tags == {
        "experiment_id": EXPERIMENT,
        "decision": result["decision"],
        "decision_id": result["decision_id"],
        "loop_id": "loop-1",
        "model_name": model_name,
    }
    arms = result["evidence"]["arms"]
    assert {k: run.data.metrics[k] for k in ("champion_labelled", "challenger_labelled")} == {
        "champion_labelled": arms["champion"]["labelled"],
        "challenger_labelled": arms["challenger"]["labelled"],
    }
    artifacts = {sub: [f.path for f in client.list_artifacts(run.info.run_id, sub)] for sub in ("plot", "report")}
    assert artifacts == {"plot": [f"plot/{plot.name}"], "report": [f"report/{report.name}"]}


def assert_events(result: dict, model_name: str, then: str) -> None:
    """`driftloop.experiment.decided`, then `then`, both with the decision's payload, on the harness server."""
    found = read_events(f"{events.RESOURCE_PREFIX}{model_name}", DECISION_EVENTS, expect=2)
    assert [e.event for e in found] == [events.EXPERIMENT_DECIDED, then]
    payload = expected_payload(result, model_name)
    assert [e.payload for e in found] == [payload, payload]
    for event in found:
        related = {r.id for r in event.related}
        assert f"{events.RESOURCE_PREFIX}{model_name}.version.2" in related


def test_a_better_challenger_is_promoted_everywhere(experiment, model_name):
    router, home = experiment(champion=FlowerModel(weak=True), challenger=FlowerModel())
    # The champion gets every second flower wrong (50%), the challenger none: a lift of 0.5 on 30 per arm.
    router.send("champion", "easy", 15)
    router.send("champion", "hard", 15)
    router.send("challenger", "easy", 15)
    router.send("challenger", "hard", 15)

    result = ab_evaluation(model_name=model_name)

    assert (result["decision"], result["evidence"]["rule"]) == ("PROMOTE", "better")
    assert result["experiment_id"] == EXPERIMENT
    arms = result["evidence"]["arms"]
    assert {arm: (arms[arm]["labelled"], arms[arm]["correct"]) for arm in arms} == {
        "champion": (30, 15),
        "challenger": (30, 30),
    }
    assert result["evidence"]["primary"]["cs_lower"] > 0
    decision_id = result["decision_id"]

    assert aliases(model_name) == {CHAMPION: "2", CHALLENGER: None}
    client = MlflowClient()
    new, old = (client.get_model_version(model_name, v).tags for v in ("2", "1"))
    assert {k: new[k] for k in (TAG_PREVIOUS_CHAMPION, TAG_DECISION_ID, TAG_DECISION)} == {
        TAG_PREVIOUS_CHAMPION: "1",
        TAG_DECISION_ID: decision_id,
        TAG_DECISION: f"promoted: {result['reason']}",
    }
    assert {k: old[k] for k in (TAG_REPLACED_BY, TAG_DECISION_ID)} == {
        TAG_REPLACED_BY: "2",
        TAG_DECISION_ID: decision_id,
    }
    assert moves(model_name) == [
        *SETUP_MOVES,
        ("champion", "1", "2", decision_id),
        ("challenger", "2", "", decision_id),
    ]

    # The router ended the experiment with the decision and reloaded: v2 alone serves.
    assert ended(router) == ("PROMOTE", result["reason"])
    served = health(router)
    assert list(served.pop("execution")) == ["champion"]  # how each arm runs: the champion alone now
    assert served == {
        "status": "ok",
        "model_name": model_name,
        "champion_version": "2",
        "challenger_version": None,
        "reasons": [],
    }
    with router.client() as client:
        current = client.experiment()
    assert (current.experiment_id, current.status, current.challenger_version) == ("v2", "none", None)

    assert_look_recorded(result, model_name, home)
    assert_events(result, model_name, events.MODEL_PROMOTED)
    assert_lineage(model_name, result)


def assert_lineage(model_name: str, result: dict) -> None:
    """The loop's chain: version and plan, the look, both alias moves and the decision events, in order."""
    from flows.lib import lineage

    chain = lineage.gather(model_name, "loop-1", mlflow.get_tracking_uri())
    kinds = [(step.kind, step.title) for step in chain.steps]
    assert ("version", f"{model_name} v2") in kinds
    assert ("look", "A/B look: PROMOTE") in kinds
    assert [t for k, t in kinds if k == "move"] == ["challenger: - -> 2", "champion: 1 -> 2", "challenger: 2 -> -"]
    assert [t for k, t in kinds if k == "event"] == [events.EXPERIMENT_DECIDED, events.MODEL_PROMOTED]
    flow_runs = [s.links.get("Prefect flow run") for s in chain.steps if s.kind == "event"]
    assert all(link and link.endswith(str(result["flow_run_id"])) for link in flow_runs), flow_runs
    markdown = loop_chain(chain)
    assert markdown.startswith(f"# Loop `loop-1` of {model_name}") and "**A/B look: PROMOTE**" in markdown


@pytest.mark.parametrize(
    "challenger,traffic,guardrail",
    [
        # 80% of the challenger's requests raise (recorded as errors); labels on 16 per arm keep the arms balanced.
        pytest.param(FlowerModel(fragile=True), {"poison": 64, "easy": 16}, "error_rate", id="errors"),
    ],
)
def test_a_challenger_breaching_a_guardrail_is_rolled_back(experiment, model_name, challenger, traffic, guardrail):
    router, home = experiment(champion=FlowerModel(), challenger=challenger)
    answered = traffic.get("easy", 0)
    router.send("champion", "easy", sum(traffic.values()), labelled=answered)
    for kind, n in traffic.items():
        codes = router.send("challenger", kind, n)
        assert set(codes) == ({500} if kind == "poison" else {200})

    result = ab_evaluation(model_name=model_name)

    assert (result["decision"], result["evidence"]["rule"]) == ("ROLLBACK", "guardrail")
    breached = [g["name"] for g in result["evidence"]["guardrails"] if not g["holds"]]
    assert breached == [guardrail]
    decision_id = result["decision_id"]

    assert aliases(model_name) == {CHAMPION: "1", CHALLENGER: None}
    tags = MlflowClient().get_model_version(model_name, "2").tags
    assert {k: tags[k] for k in (TAG_DECISION, TAG_DECISION_ID)} == {
        TAG_DECISION: f"rolled back: {result['reason']}",
        TAG_DECISION_ID: decision_id,
    }
    assert moves(model_name) == [*SETUP_MOVES, ("challenger", "2", "", decision_id)]

    assert router.http.get("/config").json() == {"ab_split_b": 0.0}
    assert ended(router) == ("ROLLBACK", result["reason"])
    served = health(router)
    assert list(served.pop("execution")) == ["champion"]  # how each arm runs: the champion alone now
    assert served == {
        "status": "ok",
        "model_name": model_name,
        "champion_version": "1",
        "challenger_version": None,
        "reasons": [],
    }

    assert_look_recorded(result, model_name, home)
    assert_events(result, model_name, events.MODEL_ROLLED_BACK)


def test_a_truly_slower_challenger_is_rolled_back_once_the_breach_persists(experiment, model_name):
    # 15 ms of CPU per call against 50 ms: the p95 limit is 15 x 1.5 + 5 ms and the model costs 35 ms more than the
    # champion's, over the plan's 5 ms floor; a ratio of 3.3 stays over the margin of 1.5 however busy the machine
    # is. Both arms are served in the same four-second buckets, filled until each holds enough of both arms however
    # busy the machine is.
    router, home = experiment(
        champion=FlowerModel(burn_ms=15), challenger=FlowerModel(burn_ms=50), guardrail_latency_bucket_seconds=4
    )
    router.fill_buckets(6, bucket_seconds=4, labelled_kind="easy")

    first = ab_evaluation(model_name=model_name)
    latency = next(g for g in first["evidence"]["guardrails"] if g["name"] == "latency_p95")
    assert latency["values"]["breached_now"] and latency["holds"], latency["detail"]
    assert first["decision"] == "CONTINUE" and aliases(model_name) == {CHAMPION: "1", CHALLENGER: "2"}

    router.interleave(1.0, labelled_kind="easy")
    second = ab_evaluation(model_name=model_name)
    assert (second["decision"], second["evidence"]["rule"]) == ("ROLLBACK", "guardrail"), second["reason"]
    assert "latency_p95 BREACHED at 2 consecutive looks" in second["reason"]
    assert aliases(model_name) == {CHAMPION: "1", CHALLENGER: None}
    assert ended(router) == ("ROLLBACK", second["reason"])


@pytest.fixture
def cpu_hog() -> Iterator[None]:
    """Another process keeping a core busy for the whole test, as a retrain or a neighbour would."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


def test_a_better_challenger_with_equal_latency_is_promoted_on_a_busy_machine(experiment, model_name, cpu_hog):
    # The demo's run, reproduced: a far more accurate challenger, both models costing the same 10 ms of CPU per call,
    # a machine busy with other work for the whole experiment. Latency swings with the load; it must not decide.
    router, _ = experiment(
        champion=FlowerModel(weak=True, burn_ms=10),
        challenger=FlowerModel(burn_ms=10),
        guardrail_latency_bucket_seconds=4,
    )
    router.fill_buckets(6, bucket_seconds=4)
    result = ab_evaluation(model_name=model_name)
    latency = next(g for g in result["evidence"]["guardrails"] if g["name"] == "latency_p95")
    assert latency["values"]["matched_buckets"] >= 5 and not latency["values"]["breached_now"], latency["detail"]
    assert result["decision"] == "PROMOTE", result["reason"]
    assert aliases(model_name) == {CHAMPION: "2", CHALLENGER: None}


def test_a_sample_ratio_mismatch_invalidates_the_experiment_and_moves_nothing(experiment, model_name):
    # A better challenger, but the plan splits 50/50 and the challenger got 12 of 112 users.
    router, home = experiment(champion=FlowerModel(weak=True), challenger=FlowerModel())
    router.send("champion", "hard", 100)
    router.send("challenger", "easy", 12)

    result = ab_evaluation(model_name=model_name)

    assert (result["decision"], result["evidence"]["rule"]) == ("INVALID", "srm_all")
    assert result["evidence"]["srm"]["all_traffic"]["observed"] == [100, 12]
    assert json.loads(Path(result["latest"]).read_text())["decision"] == "INVALID"

    assert aliases(model_name) == {CHAMPION: "1", CHALLENGER: "2"}
    assert TAG_DECISION not in MlflowClient().get_model_version(model_name, "2").tags
    assert moves(model_name) == SETUP_MOVES
    assert router.http.get("/config").json() == {"ab_split_b": 0.5}
    assert ended(router) == (None, None)
    assert health(router)["challenger_version"] == "2"
    # Paused: the champion serves everyone until an operator resumes or ends it; the challenger keeps its alias.
    experiment_now = router.http.get("/experiment").json()
    assert experiment_now["status"] == "paused" and experiment_now["pause_reason"].startswith("INVALID: sample ratio")
    (paused,) = read_events(f"{events.RESOURCE_PREFIX}{model_name}", [events.EXPERIMENT_PAUSED], expect=1)
    assert paused.payload == expected_payload(result, model_name)

    assert_look_recorded(result, model_name, home)
    assert_events(result, model_name, events.EXPERIMENT_INVALID)


@pytest.mark.parametrize("registry_challenger", ["none", "2"], ids=["no-challenger", "router-not-serving-it"])
def test_without_an_experiment_served_the_flow_writes_nothing(
    registered, start_router, flow_env, model_name, registry_challenger
):
    registry.move_alias(model_name, CHALLENGER, None, reason="test: no experiment")
    router = start_router({"1": FlowerModel(), "2": FlowerModel()})
    if registry_challenger != "none":  # set after the router loaded its models (it refreshes on demand only)
        registry.move_alias(model_name, CHALLENGER, registry_challenger, reason="test: not yet served")
    home = flow_env(router)
    history = moves(model_name)

    result = ab_evaluation(model_name=model_name)

    # The router serves no challenger, and the champion is under no post-promotion watch: nothing to do.
    assert result == {"decision": "NO_EXPERIMENT", "router_challenger": "none", "watch": "none"}
    assert not home.exists()
    assert MlflowClient().search_runs([MlflowClient().get_experiment_by_name(AB_EXPERIMENT).experiment_id]) == []
    assert moves(model_name) == history
    assert aliases(model_name) == {CHAMPION: "1", CHALLENGER: None if registry_challenger == "none" else "2"}
    assert read_events(f"{events.RESOURCE_PREFIX}{model_name}", DECISION_EVENTS, expect=1, timeout=1.0) == []


@pytest.mark.parametrize(
    "challenger_kind,expected",
    [
        # A challenger that fails every request has no labelled outcomes: the guardrail, not the labelled SRM, speaks.
        pytest.param("poison", ("ROLLBACK", "guardrail"), id="challenger-fails-every-request"),
        pytest.param(None, ("INVALID", "srm_all"), id="all-traffic-on-the-champion"),
    ],
)
def test_looks_without_labelled_outcomes_on_an_arm_still_decide(
    experiment, model_name, monkeypatch, challenger_kind, expected
):
    module = importlib.import_module("flows.ab_evaluation")
    monkeypatch.setattr(module, "record_look", module.record_look.with_options(retries=0))  # fail fast
    router, _ = experiment(champion=FlowerModel(), challenger=FlowerModel(fragile=True))
    # 80 users against none: the SRM mixture (concentration 250, level 0.004 on users) needs about 60 to flag it.
    router.send("champion", "easy", 40 if challenger_kind else 80)
    if challenger_kind:
        router.send("challenger", challenger_kind, 40)

    result = ab_evaluation(model_name=model_name)

    assert (result["decision"], result["evidence"]["rule"]) == expected


def test_the_watch_rolls_back_a_new_champion_that_breaks_its_promise(experiment, model_name):
    """v2 wins its experiment on easy and hard flowers, then fails on the poison flowers that real traffic brings:
    failures count as misses, the watch proves the regression and moves `champion` back to v1."""
    router, _ = experiment(champion=FlowerModel(weak=True), challenger=FlowerModel(fragile=True), watch_hours=1.0)
    for arm in ("champion", "challenger"):
        router.send(arm, "easy", 15)
        router.send(arm, "hard", 15)
    promoted = ab_evaluation(model_name=model_name)
    assert promoted["decision"] == "PROMOTE" and aliases(model_name) == {CHAMPION: "2", CHALLENGER: None}
    tags = MlflowClient().get_model_version(model_name, "2").tags
    assert tags["driftloop.watch_status"] == "watching" and float(tags["driftloop.watch.expected_accuracy"]) == 1.0

    holds = ab_evaluation(model_name=model_name)  # no traffic since the promotion yet
    assert holds["decision"] == "WATCH" and holds["watch"]["verdict"] == "WATCHING"

    codes = router.send("champion", "poison", 30, offset=100)
    assert set(codes) == {500}
    result = ab_evaluation(model_name=model_name)

    watch = result["watch"]
    assert (result["decision"], watch["verdict"]) == ("WATCH", "REGRESSION"), watch["reason"]
    assert watch["cs_upper"] < watch["threshold"] and watch["scored"] == 30
    assert aliases(model_name) == {CHAMPION: "1", CHALLENGER: None}
    last = registry.alias_history(model_name)[-1]
    assert (last["alias"], last["from_version"], last["to_version"]) == ("champion", "2", "1")
    assert last["reason"].startswith("rollback: post-promotion watch: regression proven")
    assert MlflowClient().get_model_version(model_name, "2").tags["driftloop.watch_status"] == "regressed"
    assert health(router)["champion_version"] == "1"  # told at once
    (event,) = read_events(f"{events.RESOURCE_PREFIX}{model_name}", [events.MODEL_WATCH_REGRESSED], expect=1)
    assert (event.payload["version"], event.payload["previous_version"]) == ("2", "1")
