"""Paging through the inference log: a keyset cursor on GET /inferences (SQLite and PostgreSQL), and the flows'
RouterClient walking it page by page over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from contracts.api import InferenceRecord, page_cursor
from flows.lib.router import RouterClient
from serving.services.store import InferenceRow, Store
from serving.settings import RouterSettings
from tests.postgres import require_server, temporary_database, with_driver
from tests.serving.conftest import TOKENS, auth

SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def row(i: int) -> InferenceRow:
    # Three requests share each timestamp: the cursor must break ties by request id.
    return InferenceRow(
        request_id=f"req-{i:03d}", ts=T0 + timedelta(seconds=i // 3), user_id=f"u{i}", arm="champion",
        model_name="Iris", model_version="1", experiment_id="v1", features={"x": float(i)}, prediction="setosa",
        label="setosa" if i % 2 else None, latency_ms=1.0,
    )  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql"])
def store_on_each_engine(request: pytest.FixtureRequest, tmp_path) -> Iterator[Store]:
    """An open store on SQLite, then on PostgreSQL."""
    if request.param == "sqlite":
        store = Store(f"sqlite:///{tmp_path / 'router.db'}")
        store.open()
        yield store
        store.close()
        return
    require_server()
    with temporary_database() as url:
        store = Store(with_driver(url, "psycopg"), pool_size=2)
        store.open()
        yield store
        store.close()


def walk(store: Store, page: int, **filters) -> list[list[str]]:
    pages, before = [], None
    while True:
        rows = store.log.recent(limit=page, before=before, **filters)
        if not rows:
            return pages
        pages.append([r.request_id for r in rows])
        before = (rows[-1].ts, rows[-1].request_id)


def test_a_walk_by_cursor_returns_every_row_once_in_log_order(store_on_each_engine):
    store = store_on_each_engine
    for i in range(25):
        store.log.record(row(i))
    everything = [r.request_id for r in store.log.recent(limit=100)]
    assert everything == [f"req-{i:03d}" for i in reversed(range(25))]
    for size in (1, 4, 5, 25):
        pages = walk(store, size)
        assert [rid for page in pages for rid in page] == everything
        assert all(len(page) == size for page in pages[:-1])
    labelled = walk(store, 4, labelled=True)
    assert [rid for page in labelled for rid in page] == [rid for rid in everything if int(rid[-3:]) % 2]
    since = walk(store, 4, since=T0 + timedelta(seconds=5))
    assert [rid for page in since for rid in page] == everything[: 25 - 15]


async def test_the_route_hands_out_a_cursor_until_the_last_page(client):
    sent = [
        (await client.post("/predict", json={"user_id": f"u{i}", "features": SETOSA})).json()["request_id"]
        for i in range(7)
    ]
    seen, before, pages = [], None, 0
    while True:
        params = {"limit": 3} | ({"before": before} if before else {})
        page = (await client.get("/inferences", params=params)).json()
        seen += [r["request_id"] for r in page["records"]]
        pages += 1
        before = page["next_cursor"]
        if before is None:
            break
    assert seen == sent[::-1]
    assert pages == 3  # 3 + 3 + 1: the short page says it is the last


async def test_a_bad_cursor_is_a_400_that_says_what_to_pass(client):
    response = await client.get("/inferences", params={"before": "not-a-cursor"})
    assert response.status_code == 400
    assert "next_cursor" in response.json()["detail"]
    response = await client.get("/inferences", params={"before": "yesterday|req-1"})
    assert response.status_code == 400


def test_the_cursor_is_the_last_records_ts_and_id():
    record = InferenceRecord(
        request_id="abc", ts=T0, user_id="u", arm="champion", model_version="1", experiment_id="v1", features={},
        prediction="setosa", label=None, latency_ms=1.0,
    )  # fmt: skip
    assert page_cursor(record) == "2026-03-01T12:00:00+00:00|abc"


def test_the_flows_client_walks_a_live_router_page_by_page(live_router):
    router = live_router(DRIFTLOOP_OUTBOX_INTERVAL_SECONDS="0")
    tokens = RouterSettings(
        _env_file=None, router_admin_token=TOKENS["admin"], router_read_token=TOKENS["read"]
    )  # only the token fields matter here
    import httpx

    with httpx.Client(base_url=router.url, timeout=10) as http:
        for i in range(23):
            body = {"user_id": f"u{i}", "features": SETOSA} | ({"label": "setosa"} if i % 2 else {})
            assert http.post("/predict", json=body, headers=auth("label")).status_code == 200
    with RouterClient(router.url, tokens=tokens) as client:
        pages = list(client.pages(limit=100, page_size=5))
        assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
        whole = client.inferences(limit=100, page_size=10_000)
        assert [r.request_id for p in pages for r in p] == [r.request_id for r in whole]
        assert len(whole) == 23
        assert len(client.inferences(limit=12, page_size=5)) == 12  # the limit cuts the last page short
        assert len(client.inferences(limit=100, labelled=True, page_size=4)) == 11
