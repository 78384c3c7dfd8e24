"""Shadow mode: the challenger scores champion requests off the request path; logged, never served, reported."""

from __future__ import annotations

import asyncio

from litestar.testing import AsyncTestClient

from tests.serving.conftest import auth

IRIS_BIG = {"sepal_length": 6.5, "sepal_width": 3.0, "petal_length": 5.5, "petal_width": 2.0}
IRIS_SMALL = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


async def _outcomes(client) -> dict:
    for _ in range(100):
        outcomes = (await client.get("/experiment/outcomes")).json()
        if outcomes["shadow"] and outcomes["shadow"]["requests"] == 10:
            return outcomes
        await asyncio.sleep(0.05)
    raise AssertionError(f"shadow records did not arrive: {outcomes}")


async def test_the_challenger_shadows_champion_requests_and_is_reported_beside_the_arms(make_app):
    app = make_app(shadow_mode=True, ab_split_b=0.0)  # everyone on the champion: the challenger only shadows
    async with AsyncTestClient(app=app) as client:
        for i in range(10):
            features, label = (IRIS_SMALL, "setosa") if i < 5 else (IRIS_BIG, "virginica")
            response = await client.post("/predict", json={"user_id": f"u{i}", "features": features, "label": label})
            assert response.json()["arm"] == "champion"
        outcomes = await _outcomes(client)
    # Champion v1 says versicolor for large petals, challenger v2 virginica (see StubSource).
    arms = [(a["arm"], a["requests"], a["correct"]) for a in outcomes["arms"]]
    assert arms == [("champion", 10, 5), ("challenger", 0, 0)]
    assert outcomes["shadow"] == {"model_version": "2", "requests": 10, "agree": 5, "labelled": 10, "correct": 10}


async def test_without_shadow_mode_nothing_is_shadowed(client):
    await client.post("/predict", json={"user_id": "u", "features": IRIS_SMALL})
    assert (await client.get("/experiment/outcomes")).json()["shadow"] is None


async def test_shadow_records_are_never_served(make_app):
    app = make_app(shadow_mode=True, ab_split_b=0.0)
    async with AsyncTestClient(app=app) as client:
        for i in range(10):
            await client.post("/predict", json={"user_id": f"u{i}", "features": IRIS_BIG}, headers=auth("admin"))
        await _outcomes(client)
        records = (await client.get("/inferences")).json()["records"]
    assert {(r["arm"], r["model_version"], r["prediction"]) for r in records} == {("champion", "1", "versicolor")}


async def test_shadow_scoring_takes_many_group_commits_at_once(make_app):
    # Nobody waits for a shadow prediction: the records of consecutive requests are scored and written together.
    app = make_app(shadow_mode=True, ab_split_b=0.0)
    async with AsyncTestClient(app=app) as client:
        shadow = app.state.shadow
        batches: list[int] = []
        process = shadow.batcher.process
        shadow.batcher.process = lambda items: batches.append(len(items)) or process(items)
        shadow.batcher.window_seconds = shadow.batcher.quiet_seconds = 1.0  # a slow machine's ten requests fit
        for i in range(10):  # one request at a time: ten group commits, all within the shadow window
            await client.post("/predict", json={"user_id": f"u{i}", "features": IRIS_SMALL})
        await _outcomes(client)
    assert sum(batches) == 10
    assert len(batches) <= 2
