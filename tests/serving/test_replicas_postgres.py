"""Two router processes on one PostgreSQL store, over real HTTP: exact counts from 64 clients spread over both,
sticky assignment whichever replica answers, nothing acknowledged lost to a kill -9 of one, the sample-reached event
sent once by the two outbox relays, and an alias move reaching both within one refresh interval."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import httpx
import msgspec
import pytest
import sqlalchemy as sa

from contracts.api import IDEMPOTENCY_HEADER, ExperimentPlan
from contracts.auth import TOKEN_ENV
from contracts.events import EXPERIMENT_SAMPLE_REACHED
from serving.services.store import Store
from tests.serving.conftest import TOKENS, LiveRouter, auth
from tests.serving.test_live import flower, post

pytestmark = pytest.mark.slow


@pytest.fixture
def replicas(tmp_path: Path, pg_url: str) -> Iterator[Callable[..., list[LiveRouter]]]:
    """Start router processes (stub models) that share one PostgreSQL store; stopped after the test."""
    started: list[LiveRouter] = []

    def start(n: int = 2, **env: str) -> list[LiveRouter]:
        tokens = {TOKEN_ENV[kind]: token for kind, token in TOKENS.items()}
        common = {**tokens, "DRIFTLOOP_ROUTER_STORE_URL": pg_url, "DRIFTLOOP_WORKER_THREADS": "16", **env}
        routers = []
        for _ in range(n):
            home = tmp_path / f"replica-{len(started) + 1}"
            home.mkdir()
            router = LiveRouter(home=home, env=common)
            started.append(router)
            routers.append(router.start())
        return routers

    yield start
    for router in started:
        router.stop()


def count(pg_url: str, sql: str, **params: object) -> int:
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(sql), params).scalar_one())
    finally:
        engine.dispose()


async def test_5000_labelled_requests_from_64_clients_over_two_replicas_are_counted_exactly(replicas, pg_url):
    routers = replicas(2, DRIFTLOOP_AB_SPLIT_B="0.5", DRIFTLOOP_OUTBOX_INTERVAL_SECONDS="0")
    rng = random.Random(11)
    work = [(i, f"user-{rng.randrange(800)}", *flower(rng), i % 2 == 0, i % 20 == 0) for i in range(5000)]
    queue: asyncio.Queue = asyncio.Queue()
    for item in work:
        queue.put_nowait(item)
    expected: Counter[tuple[str, str]] = Counter()
    statuses: Counter[int] = Counter()
    arms_of: dict[str, set[str]] = {}
    served_by: Counter[int] = Counter()

    async def client_loop(clients: list[aiohttp.ClientSession]) -> None:
        while not queue.empty():
            i, user, features, species, inline, retry = queue.get_nowait()
            key = {IDEMPOTENCY_HEADER: uuid.uuid4().hex, **auth("label")}
            body = {"user_id": user, "features": features} | ({"label": species} if inline else {})
            # Request i goes to replica i % 2, and its retry (every 20th) and its feedback to the other one.
            first, other = clients[i % 2], clients[(i + 1) % 2]
            answers = [await post(first, "/predict", body, key)]
            if retry:
                answers.append(await post(other, "/predict", body, key))
            statuses.update(a.status_code for a in answers)
            served = answers[0].json()
            assert all(a.json() == served for a in answers)  # the other replica answers the retry from the store
            served_by[i % 2] += 1
            if not inline:
                for client in (other, first)[: 1 + retry]:
                    feedback = await post(
                        client, "/feedback", {"request_id": served["request_id"], "label": species}, auth("label")
                    )
                    statuses[feedback.status_code] += 1
            arms_of.setdefault(user, set()).add(served["arm"])
            expected[(served["arm"], "requests")] += 1
            expected[(served["arm"], "labelled")] += 1
            expected[(served["arm"], "correct")] += served["prediction"] == species

    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=60)
    sessions = [
        aiohttp.ClientSession(base_url=r.url, connector=aiohttp.TCPConnector(limit=64), timeout=timeout)
        for r in routers
    ]
    try:
        await asyncio.gather(*(client_loop(sessions) for _ in range(64)))
        elapsed = time.monotonic() - started
        outcomes = []
        for session in sessions:
            async with session.get("/experiment/outcomes", headers=auth("read")) as response:
                outcomes.append(await response.json())
    finally:
        for session in sessions:
            await session.close()
    print(f"5000 labelled requests over 2 replicas on PostgreSQL in {elapsed:.1f} s; statuses {dict(statuses)}")
    assert set(statuses) == {200}
    assert served_by == {0: 2500, 1: 2500}
    assert outcomes[0]["arms"] == outcomes[1]["arms"]  # one store: both replicas tell the same counts
    got = Counter()
    for arm in outcomes[0]["arms"]:
        for name in ("requests", "labelled", "correct"):
            got[(arm["arm"], name)] = arm[name]
    assert got == expected
    assert count(pg_url, "SELECT count(*) FROM inferences") == 5000
    assert count(pg_url, "SELECT count(*) FROM inferences WHERE label IS NULL") == 0
    # Sticky: each user got one arm, whichever replica answered, and both arms were used.
    assert all(len(arms) == 1 for arms in arms_of.values())
    assert {arm for arms in arms_of.values() for arm in arms} == {"champion", "challenger"}


async def test_a_kill_9_of_one_replica_under_load_loses_no_acknowledged_record(replicas, pg_url):
    routers = replicas(2, DRIFTLOOP_OUTBOX_INTERVAL_SECONDS="0")
    victim, survivor = routers
    answered: list[str] = []
    failed = Counter()
    stop = asyncio.Event()

    async def client_loop(client: httpx.AsyncClient, n: int) -> None:
        rng = random.Random(n)
        while not stop.is_set():
            features, species = flower(rng)
            body = {"user_id": f"u{rng.randrange(500)}", "features": features, "label": species}
            try:
                response = await client.post("/predict", json=body, headers=auth("label"))
            except httpx.HTTPError:
                failed[str(client.base_url)] += 1
                await asyncio.sleep(0.05)
                continue
            if response.is_success:
                answered.append(response.json()["request_id"])

    async with (
        httpx.AsyncClient(base_url=victim.url, timeout=10) as a,
        httpx.AsyncClient(base_url=survivor.url, timeout=10) as b,
    ):
        loops = [asyncio.create_task(client_loop(a if n % 2 else b, n)) for n in range(32)]
        while len(answered) < 400:
            await asyncio.sleep(0.05)
        victim.process.send_signal(signal.SIGKILL)  # mid-flight, with writes on the wire
        victim.process.wait(timeout=10)
        at_kill = len(answered)
        while len(answered) < at_kill + 200:  # the survivor keeps serving its clients
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*loops)
    assert victim.process.returncode == -signal.SIGKILL
    store = Store(pg_url, pool_size=2)
    store.open()
    try:
        stored = set()
        with store.db.connect() as conn:
            for start in range(0, len(answered), 1000):
                chunk = answered[start : start + 1000]
                rows = conn.execute(
                    sa.text("SELECT request_id FROM inferences WHERE request_id = ANY(:ids)"), {"ids": chunk}
                )
                stored.update(r.request_id for r in rows)
    finally:
        store.close()
    missing = set(answered) - stored
    print(f"{len(answered)} answered ({at_kill} before the kill), {len(missing)} missing; failed sends {dict(failed)}")
    assert not missing
    assert (await asyncio.to_thread(httpx.get, f"{survivor.url}/ready")).status_code == 200


def plan(**changes: object) -> dict:
    values = {
        "champion_version": "1", "challenger_version": "2", "alpha": 0.05, "power": 0.8, "mde": 0.2, "baseline": 0.5,
        "min_samples_per_arm": 30, "fixed_horizon_samples_per_arm": 40, "ab_split_b": 0.5, "max_duration_hours": 24.0,
    }  # fmt: skip
    return msgspec.to_builtins(ExperimentPlan(**(values | changes)))


def write_registry(path: Path, aliases: dict[str, str], plans: dict[str, dict]) -> None:
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps({"aliases": aliases, "plans": plans}))
    temp.replace(path)  # atomic: a replica never reads half a file


def test_two_relays_send_the_sample_reached_event_once_and_an_alias_move_reaches_both(replicas, tmp_path, pg_url):
    registry = tmp_path / "registry.json"
    events_file = tmp_path / "events.jsonl"
    write_registry(registry, {"champion": "1", "challenger": "2"}, {"2": plan()})
    refresh = 1.0
    routers = replicas(
        2,
        LIVE_ROUTER_REGISTRY_FILE=str(registry),
        LIVE_ROUTER_EVENTS_FILE=str(events_file),
        DRIFTLOOP_MODEL_REFRESH_SECONDS=str(refresh),
        DRIFTLOOP_OUTBOX_INTERVAL_SECONDS="0.2",
        DRIFTLOOP_TRAFFIC_HEARTBEAT_SECONDS="0",
    )
    rng = random.Random(5)
    labelled: Counter[str] = Counter()
    with httpx.Client(timeout=10) as http:
        i = 0
        while min(labelled["champion"], labelled["challenger"]) < 40:  # past the plan's 30 per arm, on both
            features, species = flower(rng)
            body = {"user_id": f"user-{i}", "features": features, "label": species}
            response = http.post(f"{routers[i % 2].url}/predict", json=body, headers=auth("label"))
            assert response.status_code == 200, response.text
            labelled[response.json()["arm"]] += 1
            i += 1

        def sample_events() -> list[dict]:
            if not events_file.exists():
                return []
            lines = [json.loads(line) for line in events_file.read_text().splitlines()]
            return [e for e in lines if e["event"] == EXPERIMENT_SAMPLE_REACHED]

        deadline = time.monotonic() + 30
        while not sample_events() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3 * refresh)  # both replicas refreshed and relayed several times since
        sent = sample_events()
        assert len(sent) == 1, sent
        assert sent[0]["payload"]["experiment_id"] == "v1-vs-v2"
        assert count(pg_url, "SELECT count(*) FROM outbox WHERE event = :e", e=EXPERIMENT_SAMPLE_REACHED) == 1

        # The registry promotes v2: each replica serves it within one refresh interval (plus the poll).
        write_registry(registry, {"champion": "2"}, {"2": plan()})
        moved_at = time.monotonic()
        lag: dict[str, float] = {}
        while len(lag) < 2 and time.monotonic() - moved_at < 10 * refresh:
            for router in routers:
                if router.url not in lag and http.get(f"{router.url}/health").json()["champion_version"] == "2":
                    lag[router.url] = time.monotonic() - moved_at
            time.sleep(0.05)
    print(f"alias move seen after {sorted(round(v, 2) for v in lag.values())} s (refresh every {refresh} s)")
    assert len(lag) == 2
    # One interval, and half of one more for a loaded machine's scheduling and the 50 ms poll.
    assert max(lag.values()) <= 1.5 * refresh
