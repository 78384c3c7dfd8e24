"""The router store on the real PostgreSQL server: the same SQLAlchemy URL setting, a pool sized to the worker
threads, and every conditional update (write-once label, idempotency key, once-only event claim, outbox lease,
experiment start, plan and end, shared split) raced by several processes at once: exactly one winner each time."""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient

from serving.errors import AlreadyLabelled, ExperimentConflict
from serving.services.store import InferenceRow, NewEvent, Store
from serving.services.store.tables import metadata
from tests.serving.conftest import auth, outcomes_with_a_write_between_statements

PROCESSES = 8


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[Store]:
    store = Store(pg_url)
    store.open()
    yield store
    store.close()


def row(request_id: str, *, key: str | None = None, user: str = "u", arm: str = "champion") -> InferenceRow:
    return InferenceRow(
        request_id=request_id,
        ts=datetime.now(UTC),
        user_id=user,
        arm=arm,  # type: ignore[arg-type]
        model_name="Iris",
        model_version="1",
        experiment_id="v1-vs-v2",
        features={"x": 1.0},
        prediction="setosa",
        label=None,
        latency_ms=1.0,
        idempotency_key=key,
    )


def event(key: str) -> NewEvent:
    return NewEvent(key=key, event="test.event", resource={"prefect.resource.id": key}, related=[], payload={})


# --- the race harness: every process opens its own Store, waits for one start moment, then acts once ---------


def _child(job: tuple[str, float, int, Callable[[Store, int], Any]]) -> Any:
    url, start_at, index, action = job
    store = Store(url, pool_size=2)
    store.open()
    try:
        while time.time() < start_at:
            time.sleep(0.0005)
        try:
            return action(store, index)
        except (AlreadyLabelled, ExperimentConflict) as exc:
            return type(exc).__name__
    finally:
        store.close()


def race(url: str, action: Callable[[Store, int], Any], processes: int = PROCESSES) -> list[Any]:
    """Run `action(store, index)` in `processes` processes released at the same instant; their results."""
    context = multiprocessing.get_context("fork")
    start_at = time.time() + 1.5  # time for every process to connect first
    with context.Pool(processes) as pool:
        return pool.map(_child, [(url, start_at, i, action) for i in range(processes)])


def _label(store: Store, i: int) -> str:
    store.log.set_label("r1", f"label-{i}")
    return "labelled"


def _record_same_key(store: Store, i: int) -> str:
    return store.log.record(row(f"req-{i}", key="same-key")).request_id


def _claim_sample(store: Store, i: int) -> bool:
    return store.experiments.claim_sample_reached("v1-vs-v2", datetime.now(UTC), event("sample:v1-vs-v2"))


def _claim_outbox(store: Store, i: int) -> list[str]:
    claimed: list[str] = []
    unclaimed = sa.text("SELECT count(*) FROM outbox WHERE claimed_by IS NULL")
    for _ in range(200):  # a turn may lose all its candidates to other replicas: go on until none is left
        got = store.outbox.claim(f"replica-{i}", now=datetime.now(UTC), lease=timedelta(minutes=5), limit=3)
        claimed += [e.event_key for e in got]
        with store.db.connect() as conn:
            if not got and conn.execute(unclaimed).scalar_one() == 0:
                break
    return claimed


def _start(store: Store, i: int) -> datetime | None:
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=i)
    kwargs = {"model_name": "Iris", "experiment_id": "v1-vs-v2", "champion_version": "1", "challenger_version": "2"}
    return store.experiments.mark_started(**kwargs, at=at, plan={"n": i}).started_at


def _plan(store: Store, i: int) -> str:
    kwargs = {"model_name": "Iris", "experiment_id": "v3-vs-v4", "champion_version": "3", "challenger_version": "4"}
    store.experiments.save_plan(**kwargs, plan={"min_labelled": 100})
    return "saved"


def _end(store: Store, i: int) -> str:
    kwargs = {"model_name": "Iris", "experiment_id": "v1-vs-v2", "champion_version": "1", "challenger_version": "2"}
    decision = "PROMOTE" if i % 2 else "ROLLBACK"
    return store.experiments.end(**kwargs, decision=decision, reason=f"process {i}", at=datetime.now(UTC)).end_decision


def _split(store: Store, i: int) -> float:
    return store.config.ensure_split(i / 10)


def _open_only(store: Store, i: int) -> bool:
    return True


# --- tests ---------------------------------------------------------------------------------------------------


def test_the_store_runs_on_postgres_with_a_pool_of_one_connection_per_thread(pg_url):
    store = Store(pg_url, pool_size=7)
    store.open()
    try:
        assert store.db.engine.dialect.name == "postgresql"
        assert store.db.engine.dialect.driver == "psycopg"
        assert store.db.engine.pool.size() == 7
        with store.db.engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
        assert tables == set(metadata.tables)  # every table of the schema, created on PostgreSQL
        local = datetime(2024, 5, 1, 14, 0, tzinfo=UTC)
        store.log.record(dataclasses.replace(row("a"), ts=local))
        assert store.log.get("a").ts == local
        assert [r.request_id for r in store.log.recent(since=local)] == ["a"]
    finally:
        store.close()


def test_replicas_opening_an_empty_database_at_once_all_succeed(pg_url):
    assert race(pg_url, _open_only) == [True] * PROCESSES


def test_a_label_raced_by_processes_is_written_once(pg_store, pg_url):
    pg_store.log.record(row("r1"))
    results = Counter(race(pg_url, _label))
    assert results == {"labelled": 1, "AlreadyLabelled": PROCESSES - 1}
    assert pg_store.log.get("r1").label.startswith("label-")


def test_an_idempotency_key_raced_by_processes_logs_one_prediction(pg_store, pg_url):
    winners = set(race(pg_url, _record_same_key))
    assert len(winners) == 1
    with pg_store.db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM inferences")).scalar_one() == 1
    assert pg_store.log.by_key("same-key").request_id == winners.pop()


def test_the_sample_reached_claim_is_won_once_and_queues_one_event(pg_store, pg_url):
    pg_store.experiments.mark_started(
        model_name="Iris", experiment_id="v1-vs-v2", champion_version="1", challenger_version="2", at=datetime.now(UTC)
    )
    assert Counter(race(pg_url, _claim_sample)) == {True: 1, False: PROCESSES - 1}
    assert [e.event_key for e in pg_store.outbox.all()] == ["sample:v1-vs-v2"]


def test_outbox_events_are_leased_to_one_replica_each(pg_store, pg_url):
    for i in range(40):
        assert pg_store.outbox.add(event(f"e{i}"))
    claimed = [key for keys in race(pg_url, _claim_outbox) for key in keys]
    assert sorted(claimed) == sorted(f"e{i}" for i in range(40))  # every event once, none twice


def test_experiment_start_plan_and_end_keep_the_first_writer(pg_store, pg_url):
    starts = set(race(pg_url, _start))
    assert len(starts) == 1
    stored = pg_store.experiments.get("v1-vs-v2")
    assert stored.started_at == starts.pop() and stored.plan is not None
    assert race(pg_url, _plan) == ["saved"] * PROCESSES
    assert pg_store.experiments.get("v3-vs-v4").plan == {"min_labelled": 100}
    ends = Counter(race(pg_url, _end))
    first = pg_store.experiments.get("v1-vs-v2").end_decision
    assert ends == {first: PROCESSES // 2, "ExperimentConflict": PROCESSES // 2}


def test_the_split_stored_first_is_the_one_every_replica_uses(pg_store, pg_url):
    splits = set(race(pg_url, _split))
    assert len(splits) == 1
    assert pg_store.config.get_split() == splits.pop()


def test_outcomes_read_one_snapshot_on_postgres_though_labels_commit_meanwhile(pg_store):
    arm = outcomes_with_a_write_between_statements(pg_store)["champion"]
    assert (arm.requests, arm.labelled, arm.correct, arm.user_sums.sum_n, arm.user_sums.sum_x) == (4, 4, 4, 4, 4)


async def test_the_router_serves_labels_and_counts_on_postgres(make_app, settings, pg_url):
    iris = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    app = make_app(settings=settings.model_copy(update={"router_store_url": pg_url, "worker_threads": 8}))
    async with AsyncTestClient(app=app) as client:
        served = []
        for i in range(20):
            response = await client.post("/predict", json={"user_id": f"user-{i}", "features": iris})
            assert response.status_code == 200, response.text
            served.append(response.json())
        for answer in served:
            response = await client.post("/feedback", json={"request_id": answer["request_id"], "label": "setosa"})
            assert response.status_code == 200, response.text
        again = await client.post("/feedback", json={"request_id": served[0]["request_id"], "label": "virginica"})
        assert again.status_code == 409
        outcomes = (await client.get("/experiment/outcomes", headers=auth("read"))).json()
    arms = Counter(a["arm"] for a in served)
    assert {a["arm"]: (a["requests"], a["labelled"]) for a in outcomes["arms"]} == {
        arm: (n, n) for arm, n in arms.items()
    }
