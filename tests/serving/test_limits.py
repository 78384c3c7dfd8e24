"""Limits on every input: body size, string lengths, numbers the model can take, page sizes, user ids."""

import pytest

from contracts.api import MAX_FEATURES, MAX_TEXT, PAGE_MAX
from tests.serving.conftest import IRIS_ROW


async def nothing_recorded(client) -> None:
    assert (await client.get("/inferences")).json()["records"] == []
    arms = (await client.get("/experiment/outcomes")).json()["arms"]
    assert [(a["requests"], a["errors"]) for a in arms] == [(0, 0), (0, 0)]


async def test_a_body_above_the_limit_is_413(make_app, settings):
    from litestar.testing import AsyncTestClient

    async with AsyncTestClient(app=make_app(max_body_bytes=1024)) as client:
        big = {"user_id": "u", "features": {**IRIS_ROW, "note": "x" * 2000}}
        response = await client.post("/predict", json=big)
        assert response.status_code == 413, response.text
        assert response.json()["status_code"] == 413
        await nothing_recorded(client)


@pytest.mark.parametrize(
    "body,field",
    [
        ({"user_id": "u" * 257, "features": IRIS_ROW}, "user_id"),
        ({"user_id": "u", "features": {**IRIS_ROW, "k" * 129: 1.0}}, "features"),
        ({"user_id": "u", "features": {**IRIS_ROW, "note": "x" * (MAX_TEXT + 1)}}, "features"),
        ({"user_id": "u", "features": {f"f{i}": 1.0 for i in range(MAX_FEATURES + 1)}}, "features"),
        ({"user_id": "u", "features": IRIS_ROW, "label": "x" * (MAX_TEXT + 1)}, "label"),
        ({"user_id": "u", "features": IRIS_ROW, "idempotency_key": "k" * 129}, "idempotency_key"),
        ({"user_id": True, "features": IRIS_ROW}, "user_id"),
    ],
    ids=["long user", "long feature name", "long string value", "too many features", "long label", "long key", "bool"],
)
async def test_strings_and_maps_have_limits(client, body, field):
    response = await client.post("/predict", json=body)
    assert response.status_code == 400, response.text
    assert field in response.json()["detail"]
    await nothing_recorded(client)


@pytest.mark.parametrize("value", [1e300, -1e39, 10**40])
async def test_numbers_the_model_cannot_take_are_422_and_not_counted_against_the_arm(client, value):
    """1e300 is a valid double, but trees cast to float32: it would make the model raise and trip the guardrail."""
    response = await client.post("/predict", json={"user_id": "u", "features": {**IRIS_ROW, "petal_width": value}})
    assert response.status_code == 422, response.text
    assert response.json()["extra"]["wrong_type"] == {
        "petal_width": f"expected double, got {'integer' if isinstance(value, int) else 'number'} out of range "
        "(|x| <= 3.4e+38)"
    }
    await nothing_recorded(client)


async def test_integer_user_ids_are_stored_as_strings(client):
    served = (await client.post("/predict", json={"user_id": 42, "features": IRIS_ROW})).json()
    again = (await client.post("/predict", json={"user_id": "42", "features": IRIS_ROW})).json()
    assert served["arm"] == again["arm"]  # one user, however it is spelled
    records = (await client.get("/inferences")).json()["records"]
    assert [r["user_id"] for r in records] == ["42", "42"]


@pytest.mark.parametrize("limit", [0, PAGE_MAX + 1, -1])
async def test_pages_are_bounded(client, limit):
    response = await client.get("/inferences", params={"limit": limit})
    assert response.status_code == 400
    assert "limit" in response.json()["detail"]


async def test_long_reasons_and_versions_are_refused(client):
    end = {"challenger_version": "2", "decision": "ROLLBACK", "reason": "r" * 2001}
    assert (await client.post("/experiment/end", json=end)).status_code == 400
    end = {"challenger_version": "2" * 65, "decision": "ROLLBACK", "reason": "r"}
    assert (await client.post("/experiment/end", json=end)).status_code == 400
    assert (await client.get("/experiment")).json()["status"] == "running"
