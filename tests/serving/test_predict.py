"""POST /predict: response shape, recording, arm assignment and experiment ids through the API."""

import pytest
from litestar.testing import AsyncTestClient

from serving.services.assignment import assign_arm


async def test_prediction_shape_and_record(client, source, iris_row):
    response = await client.post("/predict", json={"user_id": "alice", "features": iris_row})
    assert response.status_code == 200
    body = response.json()
    arm = assign_arm("alice", salt="test-salt", split_b=0.5, has_challenger=True)
    version = "1" if arm == "champion" else "2"
    assert len(body.pop("request_id")) == 32
    assert body == {
        "prediction": "setosa",
        "model_name": "Iris",
        "model_version": version,
        "arm": arm,
        "experiment_id": "v1-vs-v2",
    }
    # The model saw one row, in signature order, as floats.
    frame = source.models[version].frames[-1]
    assert list(frame.columns) == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert frame.dtypes.astype(str).tolist() == ["float64"] * 4

    record = (await client.get("/inferences")).json()["records"][0]
    assert record.pop("ts").endswith("Z")
    assert record.pop("latency_ms") > 0
    assert 0 <= record.pop("compute_ms") < 1000  # CPU time of the model call, in ms
    assert record == {
        "request_id": response.json()["request_id"],
        "user_id": "alice",
        "arm": arm,
        "model_version": version,
        "experiment_id": "v1-vs-v2",
        "features": iris_row,
        "prediction": "setosa",
        "label": None,
    }


async def test_int_is_accepted_for_double_and_recorded_as_float(make_app, source, iris_row):
    source.classes = None  # classes unknown: any label goes
    iris_row["petal_length"] = 5
    async with AsyncTestClient(app=make_app()) as client:
        body = (await client.post("/predict", json={"user_id": "u", "features": iris_row, "label": 3})).json()
        record = (await client.get("/inferences")).json()["records"][0]
    assert body["prediction"] in ("versicolor", "virginica")
    assert record["features"]["petal_length"] == 5.0
    assert record["label"] == "3"


async def test_same_user_always_gets_the_same_arm(client, iris_row):
    for user in ("u1", "u2", "u3", "u4"):
        arms = {
            (await client.post("/predict", json={"user_id": user, "features": iris_row})).json()["arm"]
            for _ in range(5)
        }
        assert arms == {assign_arm(user, salt="test-salt", split_b=0.5, has_challenger=True)}


@pytest.mark.parametrize("split,expected", [(0.0, {"champion"}), (1.0, {"challenger"})])
async def test_split_extremes_through_config(client, iris_row, split, expected):
    assert (await client.post("/config", json={"ab_split_b": split})).status_code == 200
    arms = {
        (await client.post("/predict", json={"user_id": f"u{i}", "features": iris_row})).json()["arm"]
        for i in range(60)
    }
    assert arms == expected


async def test_split_is_roughly_respected_through_the_api(make_app, iris_row):
    async with AsyncTestClient(app=make_app(ab_split_b=0.25)) as client:
        arms = [
            (await client.post("/predict", json={"user_id": f"user-{i}", "features": iris_row})).json()["arm"]
            for i in range(400)
        ]
    assert arms.count("challenger") / len(arms) == pytest.approx(0.25, abs=0.07)


async def test_no_challenger_serves_champion_with_single_version_experiment(make_app, make_source, iris_row):
    async with AsyncTestClient(app=make_app(source=make_source(champion="3"), ab_split_b=1.0)) as client:
        bodies = [
            (await client.post("/predict", json={"user_id": f"u{i}", "features": iris_row})).json() for i in range(20)
        ]
    assert {(b["arm"], b["model_version"], b["experiment_id"]) for b in bodies} == {("champion", "3", "v3")}
