"""Faults contained: an arm that does not load, a registry that is down, a store that is read-only or locked."""

import sqlite3
import threading
import time

import anyio
import sqlalchemy as sa
from litestar.testing import AsyncTestClient

from serving.app import refresh_once
from tests.serving.conftest import IRIS_ROW


async def test_a_challenger_that_does_not_load_leaves_the_champion_serving_everyone(make_app, make_source):
    source = make_source(champion="1", challenger="2")
    source.unloadable.add("2")
    app = make_app(source=source, model_retry_seconds=3600)
    async with AsyncTestClient(app=app) as client:
        health = await client.get("/health")
        assert health.status_code == 200
        assert health.json() == {
            "status": "degraded",
            "model_name": "Iris",
            "champion_version": "1",
            "challenger_version": None,
            "reasons": [
                "challenger v2 failed to load: OSError (details in the router log); the champion serves every user"
            ],
            "execution": {"champion": "model predict"},
        }
        served = [
            (await client.post("/predict", json={"user_id": f"u{i}", "features": IRIS_ROW})).json() for i in range(20)
        ]
        assert {(s["arm"], s["model_version"], s["experiment_id"]) for s in served} == {("champion", "1", "v1")}
        assert (await client.get("/experiment")).json()["status"] == "none"
        # Not loaded again at every refresh: the next try waits for model_retry_seconds.
        await refresh_once(app.state.experiments)
        await refresh_once(app.state.experiments)
        metrics = (await client.get("/metrics")).text
    assert source.loads == {"1": 1, "2": 1}
    assert 'driftloop_router_model_load_failures_total{alias="challenger"} 1.0' in metrics


async def test_a_new_champion_that_does_not_load_keeps_the_previous_set(make_app, source):
    app = make_app()
    async with AsyncTestClient(app=app) as client:
        source.unloadable.add("3")
        source.aliases = {"champion": "3"}
        await refresh_once(app.state.experiments)
        health = (await client.get("/health")).json()
        assert (health["status"], health["champion_version"], health["challenger_version"]) == ("degraded", "1", "2")
        assert health["reasons"][0].startswith("champion v3 failed to load")
        assert (await client.post("/predict", json={"user_id": "u", "features": IRIS_ROW})).status_code == 200


async def test_registry_down_at_start_then_back(make_app, make_source):
    source = make_source(champion="1")
    source.broken = True
    app = make_app(source=source)
    async with AsyncTestClient(app=app) as client:
        health = await client.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "no_model"
        assert health.json()["reasons"] == [
            "the registry could not be read: ConnectionError (details in the router log)"
        ]
        predict = await client.post("/predict", json={"user_id": "u", "features": IRIS_ROW})
        assert predict.status_code == 503
        assert "the registry could not be read" in predict.json()["detail"]
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert {c["name"]: c["ok"] for c in ready.json()["checks"]} == {
            "store": True,
            "models": False,
            "refresh": False,
        }

        source.broken = False
        await refresh_once(app.state.experiments)
        assert (await client.get("/health")).json()["status"] == "ok"
        assert (await client.get("/ready")).status_code == 200


async def test_registry_down_while_serving_keeps_the_models(make_app, source):
    app = make_app()
    async with AsyncTestClient(app=app) as client:
        source.broken = True
        reload = await client.post("/models/reload")
        assert reload.status_code == 503
        assert reload.json()["detail"].endswith("ConnectionError (details in the router log)")
        health = (await client.get("/health")).json()
        assert (health["status"], health["champion_version"], health["challenger_version"]) == ("degraded", "1", "2")
        assert (await client.post("/predict", json={"user_id": "u", "features": IRIS_ROW})).status_code == 200


async def test_ready_fails_when_the_aliases_are_stale(make_app):
    app = make_app(model_refresh_seconds=3600, ready_max_refresh_age_seconds=1.0)
    async with AsyncTestClient(app=app) as client:
        assert (await client.get("/ready")).status_code == 200
        await anyio.sleep(1.1)
        ready = await client.get("/ready")
        assert ready.status_code == 503
        [refresh] = [c for c in ready.json()["checks"] if c["name"] == "refresh"]
        assert not refresh["ok"] and "limit 1 s" in refresh["detail"]


async def test_a_read_only_store_answers_503_with_retry_after(make_app):
    app = make_app(store_retry_after_seconds=2)
    async with AsyncTestClient(app=app) as client:
        engine = app.state.store.db.engine
        read_only = True

        def on_connect(dbapi_connection, _record):
            # What SQLite answers for a file it may not write: SQLITE_READONLY on every write.
            if read_only:
                dbapi_connection.execute("PRAGMA query_only = ON")

        sa.event.listen(engine, "connect", on_connect)
        engine.dispose()
        response = await client.post("/predict", json={"user_id": "u", "features": IRIS_ROW})
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "2"
        assert response.json()["detail"] == (
            "the inference store could not write (busy, read-only or unreachable); retry in 2 s"
        )
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert (await client.get("/health")).json()["status"] == "ok"  # liveness does not touch the store
        assert (await client.get("/inferences")).json()["records"] == []  # reads still work
        assert "driftloop_router_store_unavailable_total 1.0" in (await client.get("/metrics")).text

        read_only = False
        engine.dispose()
        assert (await client.post("/predict", json={"user_id": "u", "features": IRIS_ROW})).status_code == 200


async def test_a_locked_store_answers_503_within_the_busy_timeout(make_app, db_path):
    app = make_app(store_busy_timeout_seconds=0.2)
    async with AsyncTestClient(app=app) as client:
        locked, release = threading.Event(), threading.Event()

        def hold_the_write_lock():
            db = sqlite3.connect(db_path)
            db.execute("BEGIN IMMEDIATE")
            locked.set()
            release.wait(10)
            db.rollback()
            db.close()

        holder = threading.Thread(target=hold_the_write_lock)
        holder.start()
        locked.wait(5)
        try:
            started = time.monotonic()
            response = await client.post("/predict", json={"user_id": "u", "features": IRIS_ROW})
            waited = time.monotonic() - started
        finally:
            release.set()
            holder.join()
        assert response.status_code == 503
        assert "retry-after" in response.headers
        assert waited < 2.0  # not the old 30 s
        assert (await client.post("/predict", json={"user_id": "u", "features": IRIS_ROW})).status_code == 200
