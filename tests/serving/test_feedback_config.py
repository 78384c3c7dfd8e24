"""POST /feedback (ok, 404, 409) and GET/POST /config shared through the store."""

import pytest
from litestar.testing import AsyncTestClient


async def predict(client, iris_row, user="u", **extra):
    response = await client.post("/predict", json={"user_id": user, "features": iris_row, **extra})
    assert response.status_code == 200, response.text
    return response.json()


async def test_feedback_labels_a_request(client, iris_row):
    served = await predict(client, iris_row)
    response = await client.post("/feedback", json={"request_id": served["request_id"], "label": "virginica"})
    assert response.status_code == 200
    assert response.json() == {
        "request_id": served["request_id"],
        "label": "virginica",
        "prediction": "setosa",
        "correct": False,
        "arm": served["arm"],
        "model_version": served["model_version"],
    }
    records = (await client.get("/inferences", params={"labelled": "true"})).json()["records"]
    assert [(r["request_id"], r["label"]) for r in records] == [(served["request_id"], "virginica")]


async def test_feedback_with_int_label_compares_as_string(make_app, make_source, iris_row):
    source = make_source(champion="1")
    source.classes = None  # a model whose classes are unknown takes any label
    async with AsyncTestClient(app=make_app(source=source)) as client:
        served = await predict(client, iris_row)
        body = (await client.post("/feedback", json={"request_id": served["request_id"], "label": 7})).json()
    assert (body["label"], body["correct"]) == ("7", False)


async def test_feedback_for_unknown_request_is_404(client):
    response = await client.post("/feedback", json={"request_id": "0" * 32, "label": "setosa"})
    assert response.status_code == 404
    assert "unknown request_id" in response.json()["detail"]


async def test_a_retried_label_is_200_and_another_label_409(client, iris_row):
    served = await predict(client, iris_row)
    first = await client.post("/feedback", json={"request_id": served["request_id"], "label": "setosa"})
    assert first.json()["correct"] is True
    again = await client.post("/feedback", json={"request_id": served["request_id"], "label": "setosa"})
    assert (again.status_code, again.json()) == (200, first.json())
    other = await client.post("/feedback", json={"request_id": served["request_id"], "label": "versicolor"})
    assert other.status_code == 409
    assert "already has label 'setosa'" in other.json()["detail"]
    outcomes = (await client.get("/experiment/outcomes")).json()
    assert sum(arm["labelled"] for arm in outcomes["arms"]) == 1


async def test_inline_label_then_feedback(client, iris_row):
    served = await predict(client, iris_row, label="setosa")
    same = await client.post("/feedback", json={"request_id": served["request_id"], "label": "setosa"})
    assert same.status_code == 200
    other = await client.post("/feedback", json={"request_id": served["request_id"], "label": "virginica"})
    assert other.status_code == 409


async def test_labels_outside_the_model_classes_are_422_and_not_stored(client, iris_row):
    inline = await client.post("/predict", json={"user_id": "u", "features": iris_row, "label": "rose"})
    assert inline.status_code == 422
    assert (
        inline.json()["detail"]
        == ("label 'rose' is not a class of Iris v1: expected one of setosa, versicolor, virginica")
        or "is not a class of Iris v2" in inline.json()["detail"]
    )
    served = await predict(client, iris_row)
    later = await client.post("/feedback", json={"request_id": served["request_id"], "label": 3})
    assert later.status_code == 422
    records = (await client.get("/inferences")).json()["records"]
    assert [(r["request_id"], r["label"]) for r in records] == [(served["request_id"], None)]


async def test_config_defaults_to_settings_then_changes(client):
    assert (await client.get("/config")).json() == {"ab_split_b": 0.5}
    response = await client.post("/config", json={"ab_split_b": 0.2})
    assert (response.status_code, response.json()) == (200, {"ab_split_b": 0.2})
    assert (await client.get("/config")).json() == {"ab_split_b": 0.2}


async def test_config_is_shared_by_replicas_on_one_store(make_app):
    async with (
        AsyncTestClient(app=make_app(ab_split_b=0.1)) as one,
        AsyncTestClient(app=make_app(ab_split_b=0.9)) as two,
    ):
        # The first replica stored its initial split; the second finds it instead of its own setting.
        assert (await two.get("/config")).json() == {"ab_split_b": 0.1}
        await two.post("/config", json={"ab_split_b": 0.75})
        assert (await one.get("/config")).json() == {"ab_split_b": 0.75}
        assert (await one.get("/experiment/outcomes")).json()["ab_split_b"] == 0.75


async def test_stored_split_survives_a_restart(make_app):
    async with AsyncTestClient(app=make_app()) as client:
        await client.post("/config", json={"ab_split_b": 0.3})
    async with AsyncTestClient(app=make_app(ab_split_b=0.5)) as client:
        assert (await client.get("/config")).json() == {"ab_split_b": 0.3}


def test_initial_split_outside_unit_interval_is_refused(make_app):
    with pytest.raises(ValueError, match="ab_split_b"):
        make_app(ab_split_b=1.5)
