"""The registry lock: one Prefect global concurrency limit per model that every alias move holds, with both aliases
re-read inside it; two A/B looks and a retrain started at the same moment leave the registry consistent."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from prefect.client.orchestration import get_client

from contracts.registry import CHALLENGER, CHAMPION, registry_lock_name
from flows.ab_evaluation import ab_evaluation
from flows.lib import registry
from flows.retrain import retrain
from flows.tasks import ensure_registry_lock, registry_lock
from tests.flows.conftest import FlowerModel
from tests.flows.test_ab_evaluation_flow import experiment  # noqa: F401 - the fixture, shared

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def test_moved_since_names_each_alias_that_moved():
    seen = {CHAMPION: "1", CHALLENGER: "2"}
    assert registry.moved_since(seen, {CHAMPION: "1", CHALLENGER: "2"}) is None
    assert registry.moved_since(seen, {CHAMPION: "2", CHALLENGER: None}) == (
        "another run moved the aliases since this one decided (champion 1 -> 2, challenger 2 -> -)"
    )
    assert registry.moved_since({CHAMPION: "1", CHALLENGER: None}, {CHAMPION: "1", CHALLENGER: "3"}) == (
        "another run moved the aliases since this one decided (challenger - -> 3)"
    )
    assert registry.moved_since({CHAMPION: "1"}, {CHAMPION: "1", CHALLENGER: "3"}) is None  # only what it names


def test_the_lock_is_created_idempotently_and_held_by_one_run_at_a_time():
    name = "IrisLock"
    ensure_registry_lock(name)
    ensure_registry_lock(name)  # again: harmless
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(registry_lock_name(name))
    assert (limit.limit, limit.active_slots) == (1, 0)

    spans: list[tuple[float, float]] = []
    barrier = threading.Barrier(3)

    def hold() -> None:
        barrier.wait()
        with registry_lock(name, wait_seconds=60):
            entered = time.monotonic()
            time.sleep(0.5)
            spans.append((entered, time.monotonic()))

    with ThreadPoolExecutor(3) as pool:
        for future in [pool.submit(hold) for _ in range(3)]:
            future.result()
    spans.sort()
    assert len(spans) == 3
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:], strict=False)), spans
    with pytest.raises(TimeoutError), registry_lock(name, wait_seconds=60):
        with registry_lock(name, wait_seconds=1):
            pass


def test_two_ab_looks_and_a_retrain_at_once_move_each_alias_once(experiment, model_name, monkeypatch):  # noqa: F811
    # A loop id of its own: the lineage of other tests' loops (read from the one Prefect server) stays theirs.
    router, _ = experiment(
        champion=FlowerModel(weak=True), challenger=FlowerModel(), loop_id=f"loop-lock-{uuid.uuid4().hex[:8]}"
    )
    for arm in ("champion", "challenger"):
        router.send(arm, "easy", 20)
        router.send(arm, "hard", 20)
    small = {
        "RETRAIN_MODELS": '["lr", "dt"]', "RETRAIN_FOLDS": "2", "RETRAIN_CANDIDATES": "2",
        "RETRAIN_TUNE_ITERATIONS": "0", "GATE_RESAMPLES": "200", "GATE_MIN_HOLDOUT_ROWS": "10",
        "RETRAIN_MIN_LABELLED": "10",
    }  # fmt: skip
    for key, value in small.items():
        monkeypatch.setenv(f"DRIFTLOOP_{key}", value)
    from flows.settings import get_settings

    get_settings.cache_clear()
    before = len(registry.alias_history(model_name))
    barrier = threading.Barrier(3)

    def at_once(run, **kwargs):
        barrier.wait()
        return run(model_name=model_name, **kwargs)

    with ThreadPoolExecutor(3) as pool:
        looks = [pool.submit(at_once, ab_evaluation) for _ in range(2)]
        retrained = pool.submit(at_once, retrain, trigger="manual", force=True)
        results = [look.result() for look in looks]
        retrain_result = retrained.result()
    print("looks:", [(r["decision"], r.get("superseded")) for r in results], "retrain:", retrain_result)

    now = registry.aliases_now(model_name)
    history = registry.alias_history(model_name)
    new = [(m["alias"], m["from_version"], m["to_version"]) for m in history[before:]]
    acted = [r for r in results if r["decision"] == "PROMOTE" and "superseded" not in r]
    if not acted:
        # The retrain (small, forced) reached the lock first: its candidate replaced challenger v2, so both looks
        # found the aliases moved under the lock (or no experiment of theirs any more) and moved nothing.
        assert all("superseded" in r or r["decision"] == "NO_EXPERIMENT" for r in results), results
        version = retrain_result["version"]
        assert retrain_result.get("gate_passed") and retrain_result["plan"]["champion_version"] == "1"
        assert now == {CHAMPION: "1", CHALLENGER: version}
        assert new == [("challenger", "2", version)]
    else:
        # One look promoted; the other found the aliases moved under the lock (or, later, no experiment at all).
        assert len(acted) == 1
        other = next(r for r in results if r is not acted[0])
        assert "superseded" in other or other["decision"] == "NO_EXPERIMENT"
        promotion = [("champion", "1", "2"), ("challenger", "2", "")]
        if retrain_result.get("gate_passed"):
            # The retrain read the aliases after the promotion (champion v2, no challenger): its candidate is the
            # new challenger of v2, planned against v2, and its move comes after the promotion's.
            version = retrain_result["version"]
            assert retrain_result["plan"]["champion_version"] == "2"
            assert now == {CHAMPION: "2", CHALLENGER: version}
            assert new == [*promotion, ("challenger", "", version)]
        else:
            # It decided against champion v1 with v2 under test: its candidate failed the gate, or passed it and
            # found the aliases moved under the lock, so it is not made challenger. Either way it moves nothing.
            skipped = retrain_result.get("skipped", "")
            assert retrain_result.get("gate_passed") is False or "passed the gate but is not made challenger" in skipped
            assert now == {CHAMPION: "2", CHALLENGER: None}
            assert new == promotion
        assert {m["decision_id"] for m in history[before:][:2]} == {acted[0]["decision_id"]}
    # Every alias's moves chain: each starts where the one before ended, and the last ends where it points now.
    for alias in (CHAMPION, CHALLENGER):
        chain = [(m["from_version"], m["to_version"]) for m in history if m["alias"] == alias]
        assert all(a[1] == b[0] for a, b in zip(chain, chain[1:], strict=False)), chain
        assert (chain[-1][1] or None) == now[alias]
    assert max(Counter((m["alias"], m["from_version"], m["to_version"]) for m in history).values()) == 1
