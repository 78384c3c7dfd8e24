"""The router as a real process over HTTP: exact counts under concurrency, and nothing lost to a kill -9."""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from collections import Counter

import aiohttp
import httpx
import pytest

from contracts.api import IDEMPOTENCY_HEADER
from serving.services.store import Store
from tests.serving.conftest import auth

pytestmark = pytest.mark.slow

SPECIES = {"setosa": (1.4, 0.2), "versicolor": (4.5, 1.5), "virginica": (5.5, 2.0)}


def flower(rng: random.Random) -> tuple[dict[str, float], str]:
    species = rng.choice(list(SPECIES))
    length, width = SPECIES[species]
    features = {
        "sepal_length": round(rng.uniform(4.5, 7.5), 2),
        "sepal_width": round(rng.uniform(2.0, 4.0), 2),
        "petal_length": length + round(rng.uniform(-0.3, 0.3), 2),
        "petal_width": width,
    }
    return features, species


class Answer:
    """Status, headers and JSON of one response."""

    def __init__(self, status: int, headers: dict[str, str], body: dict) -> None:
        self.status_code, self.headers, self.body = status, headers, body

    def json(self) -> dict:
        return self.body


async def post(client: aiohttp.ClientSession, path: str, body: dict, headers: dict[str, str]) -> Answer:
    """POST as a careful client does: a 503 (busy store) or a broken connection is retried with the same
    idempotency key (or the same label), which the router answers from its log instead of counting again."""
    for attempt in range(20):
        try:
            async with client.post(path, json=body, headers=headers) as response:
                answer = Answer(response.status, dict(response.headers), await response.json())
        except (TimeoutError, aiohttp.ClientConnectionError):
            if attempt == 19:
                raise
            await asyncio.sleep(0.1)
            continue
        if answer.status_code != 503:
            return answer
        await asyncio.sleep(float(answer.headers.get("Retry-After", "0.1")) / 10)
    return answer


async def test_5000_labelled_requests_from_64_clients_are_counted_exactly(live_router):
    router = live_router(DRIFTLOOP_AB_SPLIT_B="0.5", DRIFTLOOP_OUTBOX_INTERVAL_SECONDS="0")
    rng = random.Random(8)
    work = [(f"user-{rng.randrange(800)}", *flower(rng), i % 2 == 0, i % 20 == 0) for i in range(5000)]
    queue: asyncio.Queue = asyncio.Queue()
    for item in work:
        queue.put_nowait(item)
    expected: Counter[tuple[str, str]] = Counter()
    statuses: Counter[int] = Counter()
    retried_ids: list[tuple[str, str]] = []

    async def client_loop(client: aiohttp.ClientSession) -> None:
        while not queue.empty():
            user, features, species, inline, retry = queue.get_nowait()
            key = {IDEMPOTENCY_HEADER: uuid.uuid4().hex, **auth("label")}
            body = {"user_id": user, "features": features} | ({"label": species} if inline else {})
            sends = 2 if retry else 1  # every 20th request is sent twice: the retry must not count
            answers = [await post(client, "/predict", body, key) for _ in range(sends)]
            statuses.update(a.status_code for a in answers)
            served = answers[0].json()
            assert all(a.json() == served for a in answers)
            if not inline:
                for _ in range(sends):  # and its label too
                    feedback = await post(
                        client, "/feedback", {"request_id": served["request_id"], "label": species}, auth("label")
                    )
                    statuses[feedback.status_code] += 1
            expected[(served["arm"], "requests")] += 1
            expected[(served["arm"], "labelled")] += 1
            expected[(served["arm"], "correct")] += served["prediction"] == species
            if retry:
                retried_ids.append((served["arm"], served["request_id"]))

    started = time.monotonic()
    # aiohttp, not httpx: httpx's pool is the bottleneck at 64 connections (10x fewer requests per second).
    connector = aiohttp.TCPConnector(limit=64)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(base_url=router.url, connector=connector, timeout=timeout) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(64)))
        elapsed = time.monotonic() - started
        async with client.get("/experiment/outcomes", headers=auth("read")) as response:
            outcomes = await response.json()
        async with client.get("/metrics") as response:
            metrics = await response.text()
    print(f"5000 labelled requests (+ retries) from 64 clients in {elapsed:.1f} s; statuses {dict(statuses)}")
    assert set(statuses) == {200}
    got = Counter()
    for arm in outcomes["arms"]:
        for name in ("requests", "labelled", "correct"):
            got[(arm["arm"], name)] = arm[name]
        assert arm["incorrect"] == arm["labelled"] - arm["correct"]
        assert arm["errors"] == 0
    assert got == expected
    assert sum(v for (arm, name), v in got.items() if name == "requests") == 5000
    assert {arm for arm, _ in retried_ids} == {"champion", "challenger"}
    # At least the planned retries were answered from the log (a broken connection adds its own replays).
    replays = next(
        line for line in metrics.splitlines() if line.startswith("driftloop_router_idempotent_replays_total")
    )
    assert float(replays.split()[-1]) >= 125


@pytest.mark.parametrize("synchronous", ["full", "normal"])
async def test_every_answered_request_survives_a_kill_9(live_router, synchronous):
    # `normal` leaves the disk sync to checkpoints: a killed process still leaves its commits in the WAL.
    router = live_router(DRIFTLOOP_OUTBOX_INTERVAL_SECONDS="0", DRIFTLOOP_STORE_SQLITE_SYNCHRONOUS=synchronous)
    answered: list[str] = []
    stop = asyncio.Event()

    async def client_loop(client: httpx.AsyncClient, n: int) -> None:
        rng = random.Random(n)
        while not stop.is_set():
            features, species = flower(rng)
            body = {"user_id": f"u{rng.randrange(500)}", "features": features, "label": species}
            try:
                response = await client.post("/predict", json=body, headers=auth("label"))
            except httpx.HTTPError:
                return  # the router is gone
            if response.is_success:
                answered.append(response.json()["request_id"])

    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        loops = [asyncio.create_task(client_loop(client, n)) for n in range(32)]
        while len(answered) < 300:
            await asyncio.sleep(0.05)
        router.process.send_signal(signal.SIGKILL)  # mid-flight: requests are being written as it dies
        router.process.wait(timeout=10)
        stop.set()
        await asyncio.gather(*loops)
    assert router.process.returncode == -signal.SIGKILL

    router.start()  # the same store, a new process
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        assert (await client.get("/ready")).status_code == 200
        page = (await client.get("/inferences", params={"limit": 10_000}, headers=auth("read"))).json()
    stored = {r["request_id"] for r in page["records"]}
    missing = set(answered) - stored
    print(f"{len(answered)} answered before the kill, {len(stored)} stored, {len(missing)} missing")
    assert not missing
    store = Store(router.store_url)
    store.open()
    try:
        assert all(store.log.get(request_id) is not None for request_id in answered[-20:])
    finally:
        store.close()
