"""GET /metrics: Prometheus text through prometheus-client, one registry per app."""

from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


async def test_metrics_count_requests_predictions_labels_errors_and_store_writes(make_app, source):
    source.unloadable.add("3")
    app = make_app()
    async with AsyncTestClient(app=app) as client:
        for i in range(6):
            served = (await client.post("/predict", json={"user_id": f"u{i}", "features": IRIS})).json()
            await client.post("/feedback", json={"request_id": served["request_id"], "label": "setosa"})
        await client.post("/predict", json={"user_id": "u", "features": {}})  # 422
        source.aliases["challenger"] = "3"
        await client.post("/models/reload")
        app.state.models.current.champion.estimator.predict = None  # the next prediction raises (TypeError)
        await client.post("/predict", json={"user_id": "u0", "features": IRIS})
        response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=")
    got = samples(response.text)
    champion = [k for k in got if k[0] == "driftloop_router_predict_requests_total" and ("status", "200") in k[1]]
    assert sum(got[k] for k in champion) == 6
    assert (
        got[
            (
                "driftloop_router_predict_requests_total",
                (("arm", "champion"), ("model_version", "1"), ("status", "500")),
            )
        ]
        == 1
    )
    assert got[("driftloop_router_prediction_errors_total", (("arm", "champion"), ("model_version", "1")))] == 1
    predicted = {k[1]: v for k, v in got.items() if k[0] == "driftloop_router_predictions_total"}
    assert sum(predicted.values()) == 6
    assert {dict(labels)["prediction"] for labels in predicted} == {"setosa"}
    labels = {k[1]: v for k, v in got.items() if k[0] == "driftloop_router_labels_total"}
    assert sum(labels.values()) == 6 and {dict(k)["correct"] for k in labels} == {"true"}
    assert (
        got[("driftloop_router_http_requests_total", (("method", "POST"), ("route", "/predict"), ("status", "422")))]
        == 1
    )
    assert got[("driftloop_router_http_request_duration_seconds_count", (("route", "/predict"),))] == 8
    assert got[("driftloop_router_store_write_duration_seconds_count", (("operation", "record"),))] == 6
    assert got[("driftloop_router_store_write_duration_seconds_count", (("operation", "label"),))] == 6
    assert got[("driftloop_router_model_load_failures_total", (("alias", "challenger"),))] == 1
    assert ("driftloop_router_outbox_depth", ()) in got
    assert got[("driftloop_router_serving", (("alias", "champion"), ("model_version", "1")))] == 1


async def test_two_apps_keep_their_own_counts(make_app):
    async with AsyncTestClient(app=make_app()) as one, AsyncTestClient(app=make_app()) as two:
        await one.post("/predict", json={"user_id": "u", "features": IRIS})
        counted = [samples((await c.get("/metrics")).text) for c in (one, two)]
    totals = [sum(v for k, v in c.items() if k[0] == "driftloop_router_predict_requests_total") for c in counted]
    assert totals == [1, 0]


async def test_refused_requests_are_counted_with_their_own_status(make_app, secured):
    async with AsyncTestClient(app=make_app(settings=secured)) as client:
        assert (await client.post("/config", json={"ab_split_b": 0.2})).status_code == 401
        assert (await client.post("/predict", content=b"x", headers={"content-type": "text/plain"})).status_code == 415
        got = samples((await client.get("/metrics")).text)
    requests = "driftloop_router_http_requests_total"
    assert got[key(requests, method="POST", route="/config", status="401")] == 1
    assert got[key(requests, method="POST", route="/predict", status="415")] == 1
    assert not any(k[0] == requests and ("status", "500") in k[1] for k in got)
