"""The SQL store on its own: durability pragmas, lazy creation, UTC timestamps, write-once labels."""

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient

from serving.app import create_app
from serving.errors import AlreadyLabelled, UnknownRequest
from serving.services.models import native_label
from serving.services.store import InferenceRow, Store, new_request_id
from tests.serving.conftest import outcomes_with_a_write_between_statements


def row(request_id: str, ts: datetime, label: str | None = None) -> InferenceRow:
    return InferenceRow(
        request_id=request_id,
        ts=ts,
        user_id="u",
        arm="champion",
        model_name="Iris",
        model_version="1",
        experiment_id="v1",
        features={"x": 1.0},
        prediction="setosa",
        label=label,
        latency_ms=1.0,
    )


def test_request_ids_are_time_ordered_uuid7s():
    import time
    import uuid

    earlier = new_request_id()
    time.sleep(0.002)
    ids = [new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    parsed = uuid.UUID(ids[0])
    assert len(ids[0]) == 32 and parsed.hex == ids[0] and parsed.version == 7 and parsed.variant == uuid.RFC_4122
    # Milliseconds since the epoch first: a later millisecond sorts later, and the time is the clock's.
    assert earlier < min(ids)
    assert abs(int(ids[0][:12], 16) / 1000 - time.time()) < 60


async def test_the_router_can_leave_the_sqlite_sync_to_checkpoints(settings, source, emitted):
    store = Store(settings.store_url())
    normal = settings.model_copy(update={"store_sqlite_synchronous": "normal"})
    app = create_app(normal, model_source=source, store=store, event_emitter=emitted)
    async with AsyncTestClient(app=app):
        with store.db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_sqlite_runs_in_wal_with_full_sync(store):
    with store.db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        tables = set(sa.inspect(conn).get_table_names())
    assert tables == {
        "inferences",
        "router_config",
        "prediction_errors",
        "experiments",
        "outbox",
        "replica_heartbeats",
        "shadow_inferences",
    }


def test_nothing_is_created_before_the_lifespan(settings, source, db_path, tmp_path):
    create_app(settings, model_source=source)
    assert not db_path.exists()
    # Importing the package touches nothing either (fresh interpreter, cwd in tmp).
    code = "import serving.app, serving.controllers, serving.services.store, serving.services.models"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[4])}
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, env=env)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


_OPEN_TOGETHER = """
import sys, time
from serving.services.store import Store
store = Store(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
store.open()
store.config.ensure_split(0.5)
store.log.record_many([])
"""


def test_replicas_starting_together_on_a_new_sqlite_file_all_open_it(tmp_path):
    # Several router processes on one new SQLite file (`uvicorn --workers 4`, or replicas started together): each
    # switches the file to WAL and creates the schema, racing the others. Before the fix about 1 start in 4 failed
    # with "table ... already exists" or "database is locked".
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[4])}
    for attempt in range(4):
        url = f"sqlite:///{tmp_path / str(attempt) / 'router.db'}"
        start = time.time() + 3.0  # after every process imported the store: they open it together
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", _OPEN_TOGETHER, url, str(start)], env=env, stderr=subprocess.PIPE, text=True
            )
            for _ in range(4)
        ]
        errors = [p.communicate(timeout=60)[1] for p in processes]
        assert [p.returncode for p in processes] == [0] * 4, errors
        reopened = Store(url)
        reopened.open()
        with reopened.db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        reopened.close()


def test_timestamps_round_trip_as_utc(store):
    local = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    store.log.record(row("a", local))
    assert store.log.get("a").ts == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert [r.request_id for r in store.log.recent(since=datetime(2024, 5, 1, 12, 0))] == ["a"]
    assert store.log.recent(since=datetime(2024, 5, 1, 12, 0, 1, tzinfo=UTC)) == []


def test_labels_are_write_once_and_a_repeat_is_harmless(store):
    store.log.record(row("a", datetime.now(UTC)))
    labelled, now = store.log.set_label("a", "setosa")
    assert (labelled.label, now) == ("setosa", True)
    again, now = store.log.set_label("a", "setosa")
    assert (again, now) == (labelled, False)
    with pytest.raises(AlreadyLabelled):
        store.log.set_label("a", "virginica")
    with pytest.raises(UnknownRequest):
        store.log.set_label("b", "setosa")


@pytest.mark.parametrize(
    "value,expected",
    [(np.str_("setosa"), "setosa"), (np.int64(2), 2), (np.float64(1.0), 1), (0.5, "0.5"), (np.bool_(True), "True")],
)
def test_native_label(value, expected):
    assert native_label(value) == expected
    assert type(native_label(value)) is type(expected)


def test_outcomes_read_one_snapshot_though_labels_commit_meanwhile(store):
    arm = outcomes_with_a_write_between_statements(store)["champion"]
    # Every figure is of the same four answers: none counts the fifth, committed after the first statement.
    assert (arm.requests, arm.labelled, arm.correct) == (4, 4, 4)
    assert (arm.user_sums.sum_n, arm.user_sums.sum_x, arm.users, arm.user_sums.users) == (4, 4, 2, 2)
    assert sum(cell.count for cell in arm.confusion) == 4
