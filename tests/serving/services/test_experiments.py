"""The experiment record: start, plan, end, the sample-reached event, and promotion as the router sees it."""

import logging
import uuid
from datetime import UTC, datetime, timedelta

import anyio
import msgspec
import numpy as np
import pytest
from litestar.testing import AsyncTestClient

from contracts.api import ExperimentPlan
from serving.app import refresh_once, relay_once
from serving.services.assignment import assign_arm
from serving.services.events import emit_prefect_event
from tests.serving.conftest import IRIS_ROW
from tests.serving.conftest import PLAN as CLIENT_PLAN
from tests.serving.stubs import BrokenModel

PLAN = {**CLIENT_PLAN, "loop_id": "loop-7"}
FULL_PLAN = {
    **{f.name: f.default for f in msgspec.structs.fields(ExperimentPlan) if f.default is not msgspec.NODEFAULT},
    **PLAN,
}
NO_RECORD = {
    "started_at": None,
    "plan": None,
    "sample_reached_at": None,
    "ended_at": None,
    "end_reason": None,
    "paused_at": None,
    "pause_reason": None,
    "resumed_at": None,
}
SAMPLE_REACHED = {
    "event": "driftloop.experiment.sample_reached",
    "resource": {"prefect.resource.id": "driftloop.model.Iris", "prefect.resource.name": "Iris"},
    "related": [
        {
            "prefect.resource.id": "driftloop.model.Iris.version.2",
            "prefect.resource.role": "model-version",
            "prefect.resource.name": "Iris v2",
        }
    ],
}


def tag(source, **changes) -> dict:
    """A plan body, also written as the plan tags of its challenger in the stub registry (the source of truth)."""
    body = {**PLAN, **changes}
    source.plans[body["challenger_version"]] = msgspec.convert(body, ExperimentPlan)
    return body


def ts(value: str | None) -> datetime:
    assert value is not None and value.endswith("Z"), value
    return datetime.fromisoformat(value)


def recent(value: str | None) -> bool:
    return timedelta(0) <= datetime.now(UTC) - ts(value) < timedelta(seconds=10)


def users_of(arm: str, n: int, prefix: str, split: float = 0.4) -> list[str]:
    """n user ids that the router assigns to `arm` at this split."""
    found: list[str] = []
    i = 0
    while len(found) < n:
        user = f"{prefix}-{i}"
        if assign_arm(user, salt="test-salt", split_b=split, has_challenger=True) == arm:
            found.append(user)
        i += 1
    return found


async def post_labelled(client, arm: str, n: int, prefix: str, split: float = 0.4) -> None:
    for user in users_of(arm, n, prefix, split):
        served = (await client.post("/predict", json={"user_id": user, "features": IRIS_ROW, "label": "setosa"})).json()
        assert served["arm"] == arm


async def test_champion_alone_is_no_experiment(make_app, make_source):
    async with AsyncTestClient(app=make_app(source=make_source(champion="1"))) as client:
        assert (await client.get("/experiment")).json() == {
            "experiment_id": "v1",
            "champion_version": "1",
            "challenger_version": None,
            "status": "none",
            **NO_RECORD,
        }
        outcomes = (await client.get("/experiment/outcomes")).json()
        assert (outcomes["started_at"], outcomes["plan"]) == (None, None)


async def test_start_is_recorded_once_and_shared_by_replicas(make_app):
    async with AsyncTestClient(app=make_app()) as one:
        first = (await one.get("/experiment")).json()
        assert recent(first["started_at"])
        assert first == {
            "experiment_id": "v1-vs-v2",
            "champion_version": "1",
            "challenger_version": "2",
            "status": "running",
            **NO_RECORD,
            "started_at": first["started_at"],
        }
        await anyio.sleep(0.01)
        # A second replica (or a restart) sees the same pair later: the first sighting stands.
        async with AsyncTestClient(app=make_app()) as two:
            await two.post("/models/reload")
            assert (await two.get("/experiment")).json() == first
            assert (await two.get("/experiment/outcomes")).json()["started_at"] == first["started_at"]


async def test_plan_before_the_challenger_is_loaded(make_app, make_source):
    source = make_source(champion="1")
    async with AsyncTestClient(app=make_app(source=source)) as client:
        response = await client.put("/experiment/plan", json=tag(source))
        assert (response.status_code, response.json()) == (
            200,
            {
                "experiment_id": "v1-vs-v2",
                "champion_version": "1",
                "challenger_version": "2",
                "status": "none",
                **NO_RECORD,
                "plan": FULL_PLAN,
            },
        )
        assert (await client.get("/config")).json() == {"ab_split_b": 0.4}
        # Not served yet: the current experiment is the champion alone.
        assert (await client.get("/experiment")).json()["experiment_id"] == "v1"

        source.aliases["challenger"] = "2"
        await client.post("/models/reload")
        experiment = (await client.get("/experiment")).json()
        assert recent(experiment["started_at"])
        assert experiment == {
            "experiment_id": "v1-vs-v2",
            "champion_version": "1",
            "challenger_version": "2",
            "status": "running",
            **NO_RECORD,
            "started_at": experiment["started_at"],
            "plan": FULL_PLAN,
        }
        outcomes = (await client.get("/experiment/outcomes")).json()
        assert (outcomes["started_at"], outcomes["plan"], outcomes["ab_split_b"]) == (
            experiment["started_at"],
            FULL_PLAN,
            0.4,
        )


async def test_plan_is_fixed_once_the_experiment_started(make_app, make_source):
    source = make_source(champion="1")
    async with AsyncTestClient(app=make_app(source=source)) as client:
        # Before the first assignment, a new plan (with new tags) replaces the old one.
        await client.put("/experiment/plan", json=tag(source))
        response = await client.put("/experiment/plan", json=tag(source, min_samples_per_arm=50, ab_split_b=0.2))
        assert response.json()["plan"] == {**FULL_PLAN, "min_samples_per_arm": 50, "ab_split_b": 0.2}
        assert (await client.get("/config")).json() == {"ab_split_b": 0.2}

        source.aliases["challenger"] = "2"
        await client.post("/models/reload")  # first assignment under the plan
        changed = await client.put("/experiment/plan", json=tag(source, min_samples_per_arm=5))
        assert changed.status_code == 409
        assert "a plan is fixed once the first users are assigned" in changed.json()["detail"]
        # The same plan again (a retried call) is harmless.
        source.plans["2"] = msgspec.convert({**PLAN, "min_samples_per_arm": 50, "ab_split_b": 0.2}, ExperimentPlan)
        again = await client.put("/experiment/plan", json={**PLAN, "min_samples_per_arm": 50, "ab_split_b": 0.2})
        assert again.status_code == 200
        assert (await client.get("/experiment")).json()["plan"]["min_samples_per_arm"] == 50


async def test_plan_must_match_the_registry_tags(client, source):
    untagged = await client.put("/experiment/plan", json=PLAN)
    assert untagged.status_code == 409
    assert untagged.json()["detail"] == (
        "Iris v2 carries no driftloop.plan.* tags: the registry is the source of truth for the plan, "
        "tag the version before sending it"
    )
    tag(source)
    forced = await client.put("/experiment/plan", json={**PLAN, "alpha": 0.99})
    assert (forced.status_code, forced.json()["extra"]) == (409, {"differences": ["alpha: 0.99 != 0.05"]})
    assert (await client.get("/experiment")).json()["plan"] is None
    source.broken = True
    down = await client.put("/experiment/plan", json=PLAN)
    assert down.status_code == 503
    assert "could not read the plan tags of v2" in down.json()["detail"]


async def test_the_registry_plan_is_adopted_when_the_experiment_starts(make_app, make_source, emitted):
    source = make_source(champion="1", challenger="2")
    tag(source, min_samples_per_arm=1)
    app = make_app(source=source)
    async with AsyncTestClient(app=app) as client:
        # No PUT at all: the plan comes from the challenger's tags.
        assert (await client.get("/experiment")).json()["plan"] == {**FULL_PLAN, "min_samples_per_arm": 1}
        await post_labelled(client, "champion", 1, "a")
        await post_labelled(client, "challenger", 1, "b")
        await refresh_once(app.state.experiments)
        await relay_once(app.state.relay)
    assert [e["event"] for e in emitted.events] == ["driftloop.experiment.sample_reached"]


BAD_PLANS = {
    "alpha above 1": ({**PLAN, "alpha": 1.5}, 400, ["alpha", "< 1.0"]),
    "zero samples": ({**PLAN, "min_samples_per_arm": 0}, 400, ["min_samples_per_arm", ">= 1"]),
    "split above 1": ({**PLAN, "ab_split_b": 2}, 400, ["ab_split_b", "<= 1.0"]),
    "other metric": ({**PLAN, "metric": "auc"}, 400, ["metric", "'auc'"]),
    "missing version": ({k: v for k, v in PLAN.items() if k != "challenger_version"}, 400, ["challenger_version"]),
    "unknown field": ({**PLAN, "budget": 3}, 400, ["unknown field", "budget"]),
    "same versions": ({**PLAN, "challenger_version": "1"}, 422, ["both '1'"]),
    "empty version": ({**PLAN, "champion_version": " "}, 422, ["champion_version is empty"]),
}


@pytest.mark.parametrize("body,status,words", BAD_PLANS.values(), ids=BAD_PLANS.keys())
async def test_bad_plans_say_what_was_wrong(client, body, status, words):
    response = await client.put("/experiment/plan", json=body)
    assert response.status_code == status, response.text
    assert response.json()["status_code"] == status
    for word in words:
        assert word in response.json()["detail"], response.json()["detail"]
    assert (await client.get("/config")).json() == {"ab_split_b": 0.5}
    assert (await client.get("/experiment")).json()["plan"] is None


async def test_end_after_promotion_reloads_at_once(make_app, source):
    async with AsyncTestClient(app=make_app()) as client:
        started = (await client.get("/experiment")).json()["started_at"]
        await client.put("/experiment/plan", json=tag(source))
        source.aliases = {"champion": "2"}  # the registry moved; the router has not refreshed
        end = {"challenger_version": "2", "decision": "PROMOTE", "reason": "p=0.004, +6 points"}
        response = await client.post("/experiment/end", json=end)
        body = response.json()
        assert recent(body["ended_at"])
        assert (response.status_code, body) == (
            200,
            {
                "experiment_id": "v1-vs-v2",
                "champion_version": "1",
                "challenger_version": "2",
                "status": "ended",
                "started_at": started,
                "plan": FULL_PLAN,
                "sample_reached_at": None,
                "ended_at": body["ended_at"],
                "end_reason": "PROMOTE: p=0.004, +6 points",
                "paused_at": None,
                "pause_reason": None,
                "resumed_at": None,
            },
        )
        # Reloaded by the end itself (this app has no refresh loop).
        assert (await client.get("/health")).json()["challenger_version"] is None
        assert (await client.get("/experiment")).json() == {
            "experiment_id": "v2",
            "champion_version": "2",
            "challenger_version": None,
            "status": "none",
            **NO_RECORD,
        }
        # Repeating the same end (a retried call) is harmless and keeps the first end.
        again = await client.post("/experiment/end", json={**end, "reason": "retry"})
        assert (again.status_code, again.json()) == (200, body)


async def test_end_before_the_registry_moved_keeps_serving_an_ended_experiment(client, source):
    end = {"challenger_version": "2", "decision": "ROLLBACK", "reason": "challenger worse"}
    assert (await client.post("/experiment/end", json=end)).status_code == 200
    experiment = (await client.get("/experiment")).json()
    assert (experiment["experiment_id"], experiment["status"], experiment["end_reason"]) == (
        "v1-vs-v2",
        "ended",
        "ROLLBACK: challenger worse",
    )
    other = await client.post("/experiment/end", json={**end, "decision": "PROMOTE"})
    assert other.status_code == 409
    assert other.json()["detail"] == "experiment v1-vs-v2 already ended with ROLLBACK: challenger worse"
    # An ended experiment's plan is part of the record.
    replan = await client.put("/experiment/plan", json=tag(source))
    assert replan.status_code == 409
    assert "can no longer change" in replan.json()["detail"]


async def test_end_of_another_challenger_is_409(client):
    response = await client.post(
        "/experiment/end", json={"challenger_version": "5", "decision": "ROLLBACK", "reason": "r"}
    )
    assert (response.status_code, response.json()) == (
        409,
        {
            "status_code": 409,
            "detail": "challenger '5' is not in the current or most recent experiment (the experiment is v1-vs-v2)",
            "extra": {"challenger_version": "5"},
        },
    )
    assert (await client.get("/experiment")).json()["status"] == "running"


async def test_end_with_no_experiment_ever_is_409(make_app, make_source):
    async with AsyncTestClient(app=make_app(source=make_source(champion="1"))) as client:
        response = await client.post(
            "/experiment/end", json={"challenger_version": "2", "decision": "PROMOTE", "reason": "r"}
        )
    assert response.status_code == 409
    assert "no experiment was ever served" in response.json()["detail"]


async def test_end_is_recorded_even_when_the_reload_fails(client, source):
    source.broken = True
    response = await client.post(
        "/experiment/end", json={"challenger_version": "2", "decision": "ROLLBACK", "reason": "r"}
    )
    assert response.status_code == 503
    assert "marked ended, but reloading the models failed: " in response.json()["detail"]
    assert (await client.get("/experiment")).json()["status"] == "ended"


async def test_bad_end_bodies(client):
    for body, word in [
        ({"challenger_version": "2", "decision": "KEEP", "reason": "r"}, "decision"),
        ({"challenger_version": "2", "decision": "PROMOTE"}, "reason"),
    ]:
        response = await client.post("/experiment/end", json=body)
        assert response.status_code == 400
        assert word in response.json()["detail"]


async def test_sample_reached_is_emitted_once_when_both_arms_have_enough_labels(make_app, source, emitted):
    app = make_app()
    async with AsyncTestClient(app=app) as client:
        experiments = app.state.experiments
        await client.put("/experiment/plan", json=tag(source))
        await post_labelled(client, "champion", 7, "a")
        await post_labelled(client, "challenger", 4, "b")
        for user in users_of("challenger", 3, "c"):  # unlabelled: do not count
            await client.post("/predict", json={"user_id": user, "features": IRIS_ROW})
        await refresh_once(experiments)
        await relay_once(app.state.relay)
        assert emitted.events == []

        await post_labelled(client, "challenger", 1, "d")
        await refresh_once(experiments)
        await relay_once(app.state.relay)
        assert emitted.events == [
            {
                **SAMPLE_REACHED,
                "payload": {
                    "model_name": "Iris",
                    "experiment_id": "v1-vs-v2",
                    "champion_version": "1",
                    "challenger_version": "2",
                    "min_samples_per_arm": 5,
                    "champion_labelled": 7,
                    "challenger_labelled": 5,
                },
            }
        ]
        await post_labelled(client, "challenger", 2, "e")
        await refresh_once(experiments)
        await client.post("/models/reload")
        await relay_once(app.state.relay)
        assert len(emitted.events) == 1
        assert recent((await client.get("/experiment")).json()["sample_reached_at"])


async def test_no_plan_no_event(make_app, emitted):
    app = make_app()
    async with AsyncTestClient(app=app) as client:
        await post_labelled(client, "champion", 6, "a", split=0.5)
        await post_labelled(client, "challenger", 6, "b", split=0.5)
        await client.post("/models/reload")
        await relay_once(app.state.relay)
    assert emitted.events == []


async def test_replicas_on_one_store_emit_once(make_app, source, emitted):
    one, two = make_app(), make_app()
    async with AsyncTestClient(app=one) as a, AsyncTestClient(app=two) as b:
        await a.put("/experiment/plan", json=tag(source, min_samples_per_arm=2))
        await post_labelled(a, "champion", 2, "a")
        await post_labelled(b, "challenger", 2, "b")
        async with anyio.create_task_group() as tg:
            for app in (one, two, one, two):
                tg.start_soon(refresh_once, app.state.experiments)
        async with anyio.create_task_group() as tg:
            for app in (one, two, one, two):
                tg.start_soon(relay_once, app.state.relay)
    assert [e["payload"]["experiment_id"] for e in emitted.events] == ["v1-vs-v2"]


async def test_a_refused_event_stays_in_the_outbox_until_accepted(make_app, source, emitted):
    app = make_app()
    async with AsyncTestClient(app=app) as client:
        await client.put("/experiment/plan", json=tag(source, min_samples_per_arm=1))
        await post_labelled(client, "champion", 1, "a")
        await post_labelled(client, "challenger", 1, "b")
        emitted.fail = True
        await refresh_once(app.state.experiments)
        await relay_once(app.state.relay)  # does not raise
        # Reached and queued, once; not sent.
        assert recent((await client.get("/experiment")).json()["sample_reached_at"])
        [pending] = app.state.store.outbox.all()
        failed = (pending.attempts, pending.sent_at, pending.last_error)
        assert failed == (1, None, "ConnectionError: prefect unreachable")
        assert emitted.events == []
        emitted.fail = False
        await relay_once(app.state.relay)  # not due yet: the first retry waits a second
        assert emitted.events == []
        app.state.relay.clock = lambda: datetime.now(UTC) + timedelta(seconds=2)
        await relay_once(app.state.relay)
        await refresh_once(app.state.experiments)
        await relay_once(app.state.relay)
        assert app.state.store.outbox.pending() == 0
    assert len(emitted.events) == 1
    assert emitted.ids == [pending.event_id]


async def test_the_background_loops_emit(make_app, source, emitted):
    async with AsyncTestClient(app=make_app(model_refresh_seconds=0.02, outbox_interval_seconds=0.02)) as client:
        await client.put("/experiment/plan", json=tag(source, min_samples_per_arm=1))
        await post_labelled(client, "champion", 1, "a")
        await post_labelled(client, "challenger", 1, "b")
        with anyio.fail_after(5):
            while not emitted.events:
                await anyio.sleep(0.02)
        await anyio.sleep(0.1)
        metrics = (await client.get("/metrics")).text
    assert len(emitted.events) == 1
    assert "driftloop_router_outbox_depth 0.0" in metrics


async def test_no_event_after_the_experiment_ended(make_app, source, emitted):
    app = make_app()
    async with AsyncTestClient(app=app) as client:
        await client.put("/experiment/plan", json=tag(source, min_samples_per_arm=1))
        await post_labelled(client, "champion", 1, "a")
        await post_labelled(client, "challenger", 1, "b")
        end = {"challenger_version": "2", "decision": "ROLLBACK", "reason": "r"}
        await client.post("/experiment/end", json=end)
        await client.post("/models/reload")
        await relay_once(app.state.relay)
    assert emitted.events == []


def test_prefect_emitter_skips_without_prefect_api_url(monkeypatch, caplog):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    caplog.set_level(logging.INFO, logger="serving.services.events")
    # Unset in Prefect's settings too: a Prefect test server of the same session would set it there.
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        emit_prefect_event(
            event="x.y", resource={"prefect.resource.id": "r"}, related=[], payload={"a": 1}, event_id=str(uuid.uuid4())
        )
    assert caplog.messages == ["PREFECT_API_URL is not set: skipped event x.y about r, payload {'a': 1}"]


async def test_promotion_half_done_serves_only_the_new_version(make_app, source, emitted):
    """The registry moves `champion` to the challenger, then deletes `challenger`: a refresh in between."""
    app = make_app()
    async with AsyncTestClient(app=app) as client:
        await client.put("/experiment/plan", json=tag(source, min_samples_per_arm=1))
        await client.post("/config", json={"ab_split_b": 1.0})  # every user would go to a challenger
        source.aliases = {"champion": "2", "challenger": "2"}
        await refresh_once(app.state.experiments)

        served = [
            (await client.post("/predict", json={"user_id": f"u{i}", "features": IRIS_ROW, "label": "setosa"})).json()
            for i in range(30)
        ]
        assert {(s["arm"], s["model_version"], s["experiment_id"]) for s in served} == {("champion", "2", "v2")}
        latencies = [r["latency_ms"] for r in (await client.get("/inferences")).json()["records"]]
        outcomes = (await client.get("/experiment/outcomes")).json()
        buckets = outcomes.pop("latency_buckets")
        assert {b["arm"] for b in buckets} == {"champion"} and sum(b["requests"] for b in buckets) == 30
        span = [(a.pop("first_request_at"), a.pop("last_request_at")) for a in outcomes["arms"]]
        assert all(first <= last for first, last in span)
        assert outcomes == {
            "model_name": "Iris",
            "experiment_id": "v2",
            "bucket_seconds": 60,
            "champion_version": "2",
            "challenger_version": None,
            "ab_split_b": 1.0,
            "started_at": None,
            "plan": None,
            "shadow": None,
            "paused_at": None,
            "resumed_at": None,
            "arms": [
                {
                    "arm": "champion",
                    "model_version": "2",
                    "requests": 30,
                    "labelled": 30,
                    "correct": 30,
                    "incorrect": 0,
                    "errors": 0,
                    "users": 30,
                    "labelled_users": 30,
                    "latency_p50_ms": float(np.percentile(latencies, 50)),
                    "latency_p95_ms": float(np.percentile(latencies, 95)),
                    "confusion": [{"label": "setosa", "prediction": "setosa", "count": 30}],
                    "user_sums": {
                        "users": 30,
                        "sum_n": 30,
                        "sum_x": 30,
                        "sum_nn": 30,
                        "sum_xx": 30,
                        "sum_nx": 30,
                    },  # fmt: skip
                }
            ],
        }
        assert (await client.get("/experiment")).json()["status"] == "none"
        assert app.state.store.experiments.get("v2-vs-v2") is None

        source.aliases = {"champion": "2"}  # the second write
        await refresh_once(app.state.experiments)
        assert (await client.get("/health")).json()["challenger_version"] is None
    assert source.loads == {"1": 1, "2": 1}
    assert emitted.events == []


async def test_a_breached_error_guardrail_is_reported_once(make_app, source, emitted):
    source.failing.add("2")  # the challenger raises on every prediction
    app = make_app()
    async with AsyncTestClient(app=app) as client:
        await client.put("/experiment/plan", json=tag(source, min_samples_per_arm=1000))
        for user in users_of("champion", 30, "a") + users_of("challenger", 30, "b"):
            await client.post("/predict", json={"user_id": user, "features": IRIS_ROW})
        for _ in range(3):
            await refresh_once(app.state.experiments)
            await relay_once(app.state.relay)
    [event] = emitted.events
    assert event["event"] == "driftloop.experiment.guardrail_breached"
    assert {k: v for k, v in event["payload"].items() if k != "detail"} == {
        "model_name": "Iris",
        "experiment_id": "v1-vs-v2",
        "champion_version": "1",
        "challenger_version": "2",
        "guardrail": "error_rate",
        "champion_requests": 30,
        "champion_errors": 0,
        "challenger_requests": 30,
        "challenger_errors": 30,
    }
    assert event["payload"]["detail"].startswith("challenger error rate 1.0000 over the champion's 0.0000 + margin")


async def test_a_few_failures_or_a_small_excess_are_no_breach(make_app, source, emitted):
    from serving.services.guardrails import MIN_ASSIGNED, error_breach

    plan = msgspec.convert(tag(source), ExperimentPlan)
    assert error_breach(plan, {"champion": (MIN_ASSIGNED - 1, 0), "challenger": (MIN_ASSIGNED - 1, 9)}) is None
    # margin = 0.25 x 1% + 0.5% = 0.75%
    assert error_breach(plan, {"champion": (1000, 10), "challenger": (1000, 17)}) is None  # 1.7% <= 1% + 0.75%
    assert error_breach(plan, {"champion": (1000, 10), "challenger": (1000, 18)}) is not None


async def test_a_few_errors_within_the_margin_are_no_breach(make_app, source, emitted):
    app = make_app()
    async with AsyncTestClient(app=app) as client:
        await client.put("/experiment/plan", json=tag(source, min_samples_per_arm=1000))
        for user in users_of("champion", 20, "a") + users_of("challenger", 20, "b"):
            await client.post("/predict", json={"user_id": user, "features": IRIS_ROW})
        # One failure among many answers is no proof of a worse challenger.
        app.state.models.current.challenger.estimator.predict = BrokenModel().predict
        failed = await client.post(
            "/predict", json={"user_id": users_of("challenger", 1, "c")[0], "features": IRIS_ROW}
        )
        assert failed.status_code == 500
        await refresh_once(app.state.experiments)
        await relay_once(app.state.relay)
        arms = (await client.get("/experiment/outcomes")).json()["arms"]
    assert [(a["arm"], a["errors"]) for a in arms] == [("champion", 0), ("challenger", 1)]
    assert emitted.events == []
