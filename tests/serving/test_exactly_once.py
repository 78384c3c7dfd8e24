"""Exactly once: a retried /predict with its idempotency key is answered from the log and counted once."""

import pytest
from litestar.testing import AsyncTestClient

from tests.serving.conftest import IRIS_ROW


async def counts(client) -> list[tuple[str, int, int]]:
    arms = (await client.get("/experiment/outcomes")).json()["arms"]
    return [(a["arm"], a["requests"], a["labelled"]) for a in arms if a["requests"] or a["errors"]]


@pytest.mark.parametrize("where", ["header", "body"])
async def test_a_retry_returns_the_first_answer_and_counts_once(client, where):
    body = {"user_id": "u1", "features": IRIS_ROW, "label": "setosa"}
    kwargs = (
        {"headers": {"Idempotency-Key": "k-1"}} if where == "header" else {"json": {**body, "idempotency_key": "k-1"}}
    )
    first = await client.post("/predict", **({"json": body} | kwargs))
    again = await client.post("/predict", **({"json": body} | kwargs))
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json() == first.json()
    assert await counts(client) == [(first.json()["arm"], 1, 1)]
    metrics = (await client.get("/metrics")).text
    assert "driftloop_router_idempotent_replays_total 1.0" in metrics


async def test_a_key_reused_for_another_request_is_409(client):
    first = await client.post(
        "/predict", json={"user_id": "u1", "features": IRIS_ROW}, headers={"Idempotency-Key": "k"}
    )
    other = await client.post(
        "/predict", json={"user_id": "u2", "features": IRIS_ROW}, headers={"Idempotency-Key": "k"}
    )
    assert other.status_code == 409
    assert other.json()["extra"] == {"request_id": first.json()["request_id"]}
    assert len((await client.get("/inferences")).json()["records"]) == 1


async def test_header_and_body_keys_must_agree(client):
    response = await client.post(
        "/predict",
        json={"user_id": "u", "features": IRIS_ROW, "idempotency_key": "a"},
        headers={"Idempotency-Key": "b"},
    )
    assert response.status_code == 400
    assert "differ" in response.json()["detail"]


async def test_a_failing_model_retried_with_its_key_is_one_error(make_app, make_source):
    source = make_source(champion="1")
    source.failing.add("1")
    async with AsyncTestClient(app=make_app(source=source)) as client:
        for _ in range(3):
            response = await client.post(
                "/predict", json={"user_id": "u", "features": IRIS_ROW}, headers={"Idempotency-Key": "k"}
            )
            assert response.status_code == 500
        arms = (await client.get("/experiment/outcomes")).json()["arms"]
    assert [(a["requests"], a["errors"]) for a in arms] == [(0, 1)]
