"""POST /predict/batch: many rows in one call, each assigned, checked, logged and answered like a /predict."""

from __future__ import annotations

from tests.serving.conftest import auth

IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


async def test_each_row_is_logged_and_assigned_like_a_single_prediction(client):
    rows = [{"user_id": f"u{i}", "features": IRIS, "label": "setosa"} for i in range(30)]
    response = await client.post("/predict/batch", json={"requests": rows})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status_code"] for r in results] == [200] * 30
    singles = [(await client.post("/predict", json={"user_id": f"u{i}", "features": IRIS})).json() for i in range(30)]
    assert [r["result"]["arm"] for r in results] == [s["arm"] for s in singles]  # same users, same arms
    logged = {r["request_id"] for r in (await client.get("/inferences")).json()["records"]}
    assert {r["result"]["request_id"] for r in results} <= logged and len(logged) == 60
    arms = (await client.get("/experiment/outcomes")).json()["arms"]
    assert sum(a["labelled"] for a in arms) == 30


async def test_a_bad_row_fails_alone_with_its_own_status(client):
    rows = [
        {"user_id": "a", "features": IRIS},
        {"user_id": "b", "features": {"sepal_length": 1.0}},
        {"user_id": "c", "features": IRIS, "idempotency_key": "k"},
        {"user_id": "d", "features": IRIS, "idempotency_key": "k"},
    ]
    results = (await client.post("/predict/batch", json={"requests": rows})).json()["results"]
    assert [r["status_code"] for r in results] == [200, 422, 200, 409]
    assert "petal_length" in results[1]["error"]
    assert len((await client.get("/inferences")).json()["records"]) == 2


async def test_a_batch_is_bounded(make_app):
    from litestar.testing import AsyncTestClient

    async with AsyncTestClient(app=make_app(predict_batch_rows_max=3)) as client:
        rows = [{"user_id": f"u{i}", "features": IRIS} for i in range(4)]
        response = await client.post("/predict/batch", json={"requests": rows})
        assert response.status_code == 413
        assert "at most 3" in response.json()["detail"]
        assert (await client.post("/predict/batch", json={"requests": []})).status_code == 400
        assert (await client.get("/inferences")).json()["records"] == []


async def test_inline_labels_in_a_batch_need_the_label_token(make_app, secured):
    from litestar.testing import AsyncTestClient

    async with AsyncTestClient(app=make_app(settings=secured)) as client:
        rows = [{"user_id": "a", "features": IRIS}, {"user_id": "b", "features": IRIS, "label": "setosa"}]
        results = (await client.post("/predict/batch", json={"requests": rows}, headers=auth("read"))).json()
        assert [r["status_code"] for r in results["results"]] == [200, 403]
