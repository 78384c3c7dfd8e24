"""Every client mistake is a 4xx whose ErrorBody says what was wrong; no model is a 503."""

import pytest
from litestar.testing import AsyncTestClient

from serving.services.models import FeatureSpec, ServedModel
from tests.serving.conftest import IRIS_ROW


def without(name):
    return {k: v for k, v in IRIS_ROW.items() if k != name}


CASES = {
    "missing feature": ({"user_id": "u", "features": without("petal_width")}, 422, ["missing", "petal_width"]),
    "two missing": (
        {"user_id": "u", "features": {"sepal_length": 1.0, "sepal_width": 1.0}},
        422,
        ["petal_length, petal_width"],
    ),
    "unknown feature": ({"user_id": "u", "features": {**IRIS_ROW, "colour": 1.0}}, 422, ["unknown", "colour"]),
    "string for double": (
        {"user_id": "u", "features": {**IRIS_ROW, "sepal_length": "5.1"}},
        422,
        ["sepal_length", "double", "string"],
    ),
    "bool for double": (
        {"user_id": "u", "features": {**IRIS_ROW, "sepal_width": True}},
        422,
        ["sepal_width", "double", "boolean"],
    ),
    "list as feature": ({"user_id": "u", "features": {**IRIS_ROW, "sepal_length": [1]}}, 400, ["features", "array"]),
    "extra top-level field": ({"user_id": "u", "features": IRIS_ROW, "debug": True}, 400, ["unknown field", "debug"]),
    "missing user_id": ({"features": IRIS_ROW}, 400, ["user_id"]),
    "empty user_id": ({"user_id": "", "features": IRIS_ROW}, 400, ["user_id"]),
    "float label": ({"user_id": "u", "features": IRIS_ROW, "label": 1.5}, 400, ["label"]),
    "features not an object": ({"user_id": "u", "features": [1, 2]}, 400, ["features", "object"]),
}


def assert_error_body(response, status, words):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) <= {"status_code", "detail", "extra"}
    assert body["status_code"] == status
    for word in words:
        assert word in body["detail"], body["detail"]


@pytest.mark.parametrize("body,status,words", CASES.values(), ids=CASES.keys())
async def test_bad_predict_bodies(client, body, status, words):
    assert_error_body(await client.post("/predict", json=body), status, words)
    assert (await client.get("/inferences")).json()["records"] == []  # nothing recorded


async def test_invalid_features_extra_names_every_problem(client):
    features = {**without("petal_width"), "colour": "red", "sepal_length": "x"}
    body = (await client.post("/predict", json={"user_id": "u", "features": features})).json()
    assert body["extra"] == {
        "missing": ["petal_width"],
        "unknown": ["colour"],
        "wrong_type": {"sepal_length": "expected double, got string"},
        "expected": {name: "double" for name in IRIS_ROW},
    }


@pytest.mark.parametrize(
    "content,words",
    [
        (b'{"user_id": "u", "features": {', ["malformed JSON"]),
        (b"", ["body is missing"]),
        (b"not json", ["malformed JSON"]),
    ],
)
async def test_malformed_json(client, content, words):
    response = await client.post("/predict", content=content, headers={"content-type": "application/json"})
    assert_error_body(response, 400, words)


@pytest.mark.parametrize(
    "body,words",
    [
        ({"ab_split_b": 1.5}, ["ab_split_b", "<= 1.0"]),
        ({"ab_split_b": -0.1}, ["ab_split_b", ">= 0.0"]),
        ({"ab_split_b": "half"}, ["ab_split_b", "float"]),
        ({"ab_split_b": 0.5, "other": 1}, ["unknown field", "other"]),
        ({}, ["ab_split_b"]),
    ],
)
async def test_bad_config(client, body, words):
    assert_error_body(await client.post("/config", json=body), 400, words)
    assert (await client.get("/config")).json() == {"ab_split_b": 0.5}


@pytest.mark.parametrize(
    "query,words",
    [
        ("limit=0", ["limit", ">= 1"]),
        ("limit=10001", ["limit", "<= 10000"]),
        ("limit=x", ["limit"]),
        ("since=yesterday", ["since", "datetime"]),
        ("labelled=maybe", ["labelled"]),
    ],
)
async def test_bad_inference_queries(client, query, words):
    assert_error_body(await client.get(f"/inferences?{query}"), 400, words)


async def test_bad_feedback_bodies(client):
    assert_error_body(await client.post("/feedback", json={"request_id": "x"}), 400, ["label"])
    assert_error_body(await client.post("/feedback", json={"request_id": "", "label": "a"}), 400, ["request_id"])


async def test_unknown_route_and_method_use_the_error_body(client):
    assert_error_body(await client.get("/nope"), 404, ["Not Found"])
    assert_error_body(await client.get("/predict"), 405, ["Method Not Allowed"])


async def test_no_model_is_503_with_a_clear_detail(make_app, make_source):
    async with AsyncTestClient(app=make_app(source=make_source())) as client:
        response = await client.post("/predict", json={"user_id": "u", "features": IRIS_ROW})
        assert_error_body(response, 503, ["no model loaded", "champion"])
        assert_error_body(await client.get("/experiment/outcomes"), 503, ["no model loaded"])
        health = await client.get("/health")
        assert health.status_code == 503
        assert health.json() == {
            "status": "no_model",
            "model_name": "Iris",
            "champion_version": None,
            "challenger_version": None,
            "reasons": ["no champion alias on Iris: /predict answers 503"],
            "execution": {},
        }


async def test_out_of_range_numbers_are_a_client_error(client):
    features = b'{"sepal_length": 1e999, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}'
    content = b'{"user_id": "u", "features": ' + features + b"}"
    response = await client.post("/predict", content=content, headers={"content-type": "application/json"})
    assert_error_body(response, 400, ["out of range"])
    assert (await client.get("/experiment/outcomes")).json()["arms"][0]["errors"] == 0


async def assert_nothing_recorded(client):
    assert (await client.get("/inferences")).json()["records"] == []
    arms = (await client.get("/experiment/outcomes")).json()["arms"]
    assert [(a["requests"], a["errors"], a["users"]) for a in arms] == [(0, 0, 0), (0, 0, 0)]


async def test_integer_too_big_for_a_double_is_a_wrong_type(client):
    # JSON integers have no size limit: 10**400 decodes, but no float holds it.
    response = await client.post("/predict", json={"user_id": "u", "features": {**IRIS_ROW, "petal_width": 10**400}})
    assert_error_body(response, 422, ["petal_width expected double, got integer out of range"])
    assert response.json()["extra"]["wrong_type"] == {"petal_width": "expected double, got integer out of range"}
    await assert_nothing_recorded(client)


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


@pytest.fixture
def typed_source(make_source):
    """A registry whose versions take `petal_length` as double, `sepal_length` as long, `sepal_width` as integer."""
    types = {"sepal_length": "long", "sepal_width": "integer", "petal_length": "double", "petal_width": "double"}

    class TypedSource(make_source):
        def load(self, version):
            served = super().load(version)
            features = tuple(FeatureSpec(f.name, types[f.name]) for f in served.features)
            return ServedModel(name=served.name, version=served.version, features=features, estimator=served.estimator)

    return TypedSource(champion="1", challenger="2")


@pytest.mark.parametrize(
    "column,value,ok",
    [
        ("sepal_length", INT64_MAX, True),
        ("sepal_length", INT64_MIN, True),
        ("sepal_length", INT64_MAX + 1, False),
        ("sepal_length", INT64_MIN - 1, False),
        ("sepal_length", 10**400, False),
        ("sepal_width", INT32_MAX, True),
        ("sepal_width", INT32_MIN, True),
        ("sepal_width", INT32_MAX + 1, False),
        ("sepal_width", INT32_MIN - 1, False),
    ],
)
async def test_integers_outside_the_signature_type_are_a_wrong_type(make_app, typed_source, column, value, ok):
    features = {"sepal_length": 5, "sepal_width": 3, "petal_length": 1.4, "petal_width": 0.2, column: value}
    async with AsyncTestClient(app=make_app(source=typed_source)) as client:
        response = await client.post("/predict", json={"user_id": "u", "features": features})
        if ok:
            assert response.status_code == 200, response.text
            assert (await client.get("/inferences")).json()["records"][0]["features"][column] == value
            return
        expected = "long" if column == "sepal_length" else "integer"
        assert_error_body(response, 422, [f"{column} expected {expected}, got integer out of range"])
        assert response.json()["extra"]["wrong_type"] == {column: f"expected {expected}, got integer out of range"}
        await assert_nothing_recorded(client)
