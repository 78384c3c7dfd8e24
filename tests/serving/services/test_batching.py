"""Micro-batching: concurrent requests share one predict per arm and one commit, each gets its own answer."""

from __future__ import annotations

import asyncio
import threading

import pytest
from litestar.testing import AsyncTestClient
from prometheus_client import generate_latest

from contracts.api import PredictRequest
from serving.errors import Overloaded, RouterError
from serving.services.batching import MicroBatcher
from tests.serving.stubs import StubModel

IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


class Recorder:
    """A batch function that doubles numbers, fails on negative ones, and remembers each batch."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = gate
        self.entered = threading.Event()

    def __call__(self, items: list[int]) -> list[int | Exception]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        self.batches.append(list(items))
        return [RouterError(f"negative: {i}") if i < 0 else 2 * i for i in items]


async def test_concurrent_items_travel_in_one_batch_and_get_their_own_outcomes():
    process = Recorder()
    batcher = MicroBatcher(process, window_seconds=0.05, max_batch=64, max_queue=100)
    batcher.start()
    try:
        results = await asyncio.gather(*(batcher.run(i) for i in [1, 2, -3, 4]), return_exceptions=True)
    finally:
        await batcher.close()
    assert process.batches == [[1, 2, -3, 4]]
    assert results[:2] == [2, 4] and results[3] == 8
    assert isinstance(results[2], RouterError) and results[2].detail == "negative: -3"


async def test_an_idle_batcher_stops_waiting_once_no_more_items_arrive():
    # A 5 s window, a 50 ms quiet spell: a lone request is not held for the whole window.
    process = Recorder()
    batcher = MicroBatcher(process, window_seconds=5.0, quiet_seconds=0.05, max_batch=64, max_queue=100)
    batcher.start()
    try:
        assert await asyncio.wait_for(batcher.run(1), timeout=2.5) == 2
    finally:
        await batcher.close()
    assert process.batches == [[1]]


async def test_items_arriving_closer_than_the_quiet_spell_travel_together():
    process = Recorder()
    batcher = MicroBatcher(process, window_seconds=5.0, quiet_seconds=0.5, max_batch=64, max_queue=100)
    batcher.start()
    try:
        futures = []
        for i in range(5):  # a burst spread over about 80 ms, each gap far shorter than the quiet spell
            futures += batcher.submit([i])
            await asyncio.sleep(0.02)
        assert await asyncio.wait_for(asyncio.gather(*futures), timeout=4.0) == [0, 2, 4, 6, 8]
    finally:
        await batcher.close()
    assert process.batches == [[0, 1, 2, 3, 4]]


async def test_a_burst_as_large_as_the_last_one_goes_without_waiting_for_the_quiet_spell():
    # Clients that wait for their answers come back in bursts of the same size: once the whole burst is queued,
    # waiting for a quiet spell only adds latency.
    loop = asyncio.get_running_loop()

    async def burst(batcher: MicroBatcher[int, int], items: list[int]) -> tuple[list[int], float]:
        while not batcher._waiting:  # idle again (not still finishing the last batch): the burst starts a batch
            await asyncio.sleep(0.001)
        started = loop.time()
        answers = await asyncio.wait_for(asyncio.gather(*batcher.submit(items)), timeout=10)
        return answers, loop.time() - started

    process = Recorder()
    batcher = MicroBatcher(process, window_seconds=5.0, quiet_seconds=1.0, max_batch=64, max_queue=100)
    batcher.start()
    try:
        first, first_wait = await burst(batcher, [1, 2, 3])  # a first burst: its size is not known yet
        second, second_wait = await burst(batcher, [4, 5, 6])
    finally:
        await batcher.close()
    assert (first, second) == ([2, 4, 6], [8, 10, 12])
    assert process.batches == [[1, 2, 3], [4, 5, 6]]
    assert first_wait >= 0.9  # waited for the quiet spell
    assert second_wait < 0.9  # did not

    process = Recorder()
    batcher = MicroBatcher(process, window_seconds=5.0, quiet_seconds=1.0, burst_memory=0, max_batch=64, max_queue=100)
    batcher.start()
    try:
        await burst(batcher, [1, 2, 3])
        _, wait = await burst(batcher, [4, 5, 6])
    finally:
        await batcher.close()
    assert wait >= 0.9  # burst_memory=0: always the quiet spell


async def test_batches_are_capped_at_max_batch():
    process = Recorder()
    batcher = MicroBatcher(process, window_seconds=0.05, max_batch=3, max_queue=100)
    batcher.start()
    try:
        assert await asyncio.gather(*(batcher.run(i) for i in range(7))) == [2 * i for i in range(7)]
    finally:
        await batcher.close()
    assert [len(b) for b in process.batches] == [3, 3, 1]


async def test_a_full_queue_is_refused_at_once_with_retry_after():
    gate = threading.Event()
    process = Recorder(gate)
    batcher = MicroBatcher(process, window_seconds=0, max_batch=1, max_queue=2, retry_after=3)
    batcher.start()
    try:
        first = asyncio.ensure_future(batcher.run(1))
        await asyncio.to_thread(process.entered.wait, 5)  # the first item is being processed
        queued = batcher.submit([2, 3])  # fills the queue
        with pytest.raises(Overloaded) as refused:
            batcher.submit([4])
        assert refused.value.status_code == 503
        assert refused.value.headers == {"Retry-After": "3"}
        assert "limit 2" in refused.value.detail
        gate.set()
        assert [await first, *(await asyncio.gather(*queued))] == [2, 4, 6]
    finally:
        gate.set()
        await batcher.close()


async def test_close_answers_everything_queued_then_refuses():
    gate = threading.Event()
    process = Recorder(gate)
    batcher = MicroBatcher(process, window_seconds=0, max_batch=2, max_queue=10)
    batcher.start()
    futures = batcher.submit([1, 2, 3, 4, 5])
    closing = asyncio.ensure_future(batcher.close())
    gate.set()
    await closing
    assert [f.result() for f in futures] == [2, 4, 6, 8, 10]
    with pytest.raises(Overloaded):
        batcher.submit([6])


async def test_a_batch_function_that_raises_fails_only_its_batch():
    calls = []

    def process(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return items

    batcher = MicroBatcher(process, window_seconds=0, max_batch=8, max_queue=8)
    batcher.start()
    try:
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.run(1)
        assert await batcher.run(2) == 2
    finally:
        await batcher.close()


def _metric(text: str, name: str) -> float:
    [line] = [line for line in text.splitlines() if line.startswith(name + " ") or line.startswith(name + "{")]
    return float(line.rsplit(" ", 1)[1])


async def _predict_together(app, bodies, keys=None):
    """Submit requests to the app's batcher at once, on the app's own loop (`async with app.lifespan()`): the test
    client sends one request at a time, from another loop."""
    keys = keys or [None] * len(bodies)
    prepare = app.state.predictor.prepare
    pending = [prepare(PredictRequest(**body), idempotency_key=key) for body, key in zip(bodies, keys, strict=True)]
    return await asyncio.gather(*(app.state.batcher.run(p) for p in pending), return_exceptions=True)


async def test_concurrent_predictions_share_commits_and_are_all_logged(make_app):
    app = make_app(predict_batch_window_ms=20)
    async with app.lifespan():
        answers = await _predict_together(
            app, [{"user_id": f"u{i}", "features": IRIS, "label": "setosa"} for i in range(40)]
        )
        assert len({a.request_id for a in answers}) == 40
        records = app.state.store.log.recent()
        assert {r.request_id for r in records} == {a.request_id for a in answers}
        assert all(r.latency_ms > 0 for r in records)
        assert sorted(r.label for r in records) == ["setosa"] * 40
        metrics = generate_latest(app.state.metrics.registry).decode()
    batches = _metric(metrics, "driftloop_router_predict_batch_size_count")
    commits = _metric(metrics, 'driftloop_router_store_write_duration_seconds_count{operation="record"}')
    assert commits == batches == 1  # one predict per arm and one commit for all 40


async def test_bad_rows_in_a_batch_fail_alone(make_app):
    app = make_app(predict_batch_window_ms=20)
    async with app.lifespan():
        good, bad = {"user_id": "u1", "features": IRIS}, {"user_id": "u2", "features": {"sepal_length": 1.0}}
        answers = await _predict_together(app, [good, bad, good])
        assert isinstance(answers[1], RouterError) and answers[1].status_code == 422
        assert not isinstance(answers[0], Exception) and not isinstance(answers[2], Exception)
        assert len(app.state.store.log.recent()) == 2


async def test_the_same_key_twice_in_one_batch_is_one_record(make_app):
    app = make_app(predict_batch_window_ms=50)
    async with app.lifespan():
        body = {"user_id": "u1", "features": IRIS}
        a, b, c = await _predict_together(app, [body, body, {**body, "user_id": "u2"}], keys=["same"] * 3)
        assert a == b
        assert isinstance(c, RouterError) and c.status_code == 409
        assert [r.request_id for r in app.state.store.log.recent()] == [a.request_id]
        [again] = await _predict_together(app, [body], keys=["same"])
        assert again == a


async def test_a_split_change_on_another_replica_arrives_within_one_refresh(make_app):
    replica = make_app(model_refresh_seconds=0.2)
    other = make_app()
    async with AsyncTestClient(app=replica) as client, AsyncTestClient(app=other) as admin:
        assert (await client.post("/config", json={"ab_split_b": 0.0})).status_code == 200
        # This replica's own change applies at once.
        arms = {
            (await client.post("/predict", json={"user_id": f"u{i}", "features": IRIS})).json()["arm"]
            for i in range(20)
        }
        assert arms == {"champion"}
        assert (await admin.post("/config", json={"ab_split_b": 1.0})).status_code == 200
        await asyncio.sleep(0.5)
        arms = {
            (await client.post("/predict", json={"user_id": f"v{i}", "features": IRIS})).json()["arm"]
            for i in range(20)
        }
        assert arms == {"challenger"}


class GatedModel(StubModel):
    """A stub model that blocks in predict until released (a slow model under load)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def predict(self, frame):
        self.entered.set()
        self.gate.wait(10)
        return super().predict(frame)


async def test_a_full_predict_queue_refuses_with_503_and_loses_nothing(make_app, make_source):
    source = make_source(champion="1")
    model = source.models["1"] = GatedModel()
    app = make_app(source=source, predict_queue_max=1, predict_batch_max=1, predict_batch_window_ms=0)
    async with app.lifespan():
        prepare, batcher = app.state.predictor.prepare, app.state.batcher
        first = asyncio.ensure_future(batcher.run(prepare(PredictRequest(user_id="a", features=IRIS))))
        await asyncio.to_thread(model.entered.wait, 5)  # the first batch is in the model
        second = asyncio.ensure_future(batcher.run(prepare(PredictRequest(user_id="b", features=IRIS))))
        await asyncio.sleep(0)
        assert batcher.depth == 1
        with pytest.raises(Overloaded) as refused:
            await batcher.run(prepare(PredictRequest(user_id="c", features=IRIS)))
        assert refused.value.status_code == 503 and refused.value.headers == {"Retry-After": "1"}
        model.gate.set()
        answers = [await first, await second]
        assert {r.request_id for r in app.state.store.log.recent()} == {a.request_id for a in answers}


async def test_the_next_batch_is_processed_while_the_previous_one_commits():
    gate, committing = threading.Event(), threading.Event()
    processed: list[list[int]] = []
    committed: list[list[int]] = []

    def process(items: list[int]) -> list[int]:
        processed.append(items)
        return items

    def commit(items: list[int]) -> list[int]:
        committing.set()
        gate.wait(10)
        committed.append(items)
        return [10 * i for i in items]

    batcher = MicroBatcher(process, commit=commit, window_seconds=0, max_batch=2, max_queue=10)
    batcher.start()
    try:
        first = batcher.submit([1, 2])
        await asyncio.to_thread(committing.wait, 5)
        second = batcher.submit([3])
        for _ in range(100):  # the second batch is predicted while the first one still commits
            if len(processed) == 2:
                break
            await asyncio.sleep(0.01)
        assert processed == [[1, 2], [3]] and committed == []
        gate.set()
        assert await asyncio.gather(*first, *second) == [10, 20, 30]
        assert committed == [[1, 2], [3]]
    finally:
        gate.set()
        await batcher.close()
