"""Model lifecycle: alias changes picked up by the refresh loop and /models/reload, health, OpenAPI."""

import anyio
import numpy as np
import pandas as pd
import pytest
from litestar.testing import AsyncTestClient

from serving.errors import InvalidFeatures
from serving.services.models import WARM_UP_PREDICTIONS, FeatureSpec, ServedModel, warm_up
from tests.serving.conftest import IRIS_ROW, StubModel


async def health(client):
    return (await client.get("/health")).json()


async def test_health_reports_the_served_versions(client):
    response = await client.get("/health")
    assert (response.status_code, response.json()) == (
        200,
        {
            "status": "ok",
            "model_name": "Iris",
            "champion_version": "1",
            "challenger_version": "2",
            "reasons": [],
            "execution": {"champion": "model predict", "challenger": "model predict"},
        },
    )


async def test_reload_picks_up_alias_moves_without_restart(make_app, source):
    async with AsyncTestClient(app=make_app()) as client:
        # Promotion: the challenger becomes champion, the challenger alias is dropped.
        source.aliases = {"champion": "2"}
        response = await client.post("/models/reload")
        assert (response.status_code, response.json()) == (
            200,
            {
                "status": "ok",
                "model_name": "Iris",
                "champion_version": "2",
                "challenger_version": None,
                "reasons": [],
                "execution": {"champion": "model predict"},
            },
        )
        served = (await client.post("/predict", json={"user_id": "u", "features": IRIS_ROW})).json()
        assert (served["arm"], served["model_version"], served["experiment_id"]) == ("champion", "2", "v2")
    # v2 was loaded once (as challenger) and reused as champion.
    assert source.loads == {"1": 1, "2": 1}


async def test_refresh_loop_swaps_models(make_app, source):
    async with AsyncTestClient(app=make_app(model_refresh_seconds=0.02)) as client:
        source.aliases["challenger"] = "3"
        with anyio.fail_after(5):
            while (await health(client))["challenger_version"] != "3":
                await anyio.sleep(0.02)
        assert (await health(client))["champion_version"] == "1"
        # Unchanged aliases do not reload anything.
        await anyio.sleep(0.1)
    assert source.loads == {"1": 1, "2": 1, "3": 1}


async def test_registry_failure_keeps_serving_current_models(make_app, source):
    async with AsyncTestClient(app=make_app(model_refresh_seconds=0.02)) as client:
        source.broken = True
        await anyio.sleep(0.1)  # a few failed refreshes
        response = await client.post("/models/reload")
        assert response.status_code == 503
        assert response.json()["detail"].endswith("ConnectionError (details in the router log)")
        assert (await health(client))["champion_version"] == "1"
        assert (await client.post("/predict", json={"user_id": "u", "features": IRIS_ROW})).status_code == 200


async def test_router_starts_without_a_champion_and_picks_one_up(make_app, make_source):
    source = make_source()
    async with AsyncTestClient(app=make_app(source=source)) as client:
        assert (await client.get("/health")).status_code == 503
        source.aliases["champion"] = "5"
        assert (await client.post("/models/reload")).json()["status"] == "ok"
        assert (await client.post("/predict", json={"user_id": "u", "features": IRIS_ROW})).status_code == 200


async def test_challenger_on_the_champion_version_is_no_experiment(make_app, make_source):
    async with AsyncTestClient(app=make_app(source=make_source(champion="2", challenger="2"))) as client:
        assert (await health(client))["challenger_version"] is None


async def test_lifespan_opens_and_closes_the_source(make_app, source):
    app = make_app()
    async with AsyncTestClient(app=app):
        assert source.opened
        assert app.state.model_source is source
    assert not source.opened


async def test_openapi_lists_every_path(client):
    schema = (await client.get("/schema/openapi.json")).json()
    assert schema["info"]["title"] == "driftloop router"
    operations = {
        (path, method): op["operationId"] for path, item in schema["paths"].items() for method, op in item.items()
    }
    assert operations == {
        ("/predict", "post"): "predict",
        ("/predict/batch", "post"): "predict_batch",
        ("/feedback", "post"): "submit_feedback",
        ("/inferences", "get"): "list_inferences",
        ("/config", "get"): "get_config",
        ("/config", "post"): "set_config",
        ("/experiment", "get"): "get_experiment",
        ("/experiment/plan", "put"): "set_experiment_plan",
        ("/experiment/end", "post"): "end_experiment",
        ("/experiment/pause", "post"): "pause_experiment",
        ("/experiment/resume", "post"): "resume_experiment",
        ("/experiment/outcomes", "get"): "get_outcomes",
        ("/health", "get"): "get_health",
        ("/ready", "get"): "get_ready",
        ("/metrics", "get"): "get_metrics",
        ("/models/reload", "post"): "reload_models",
    }
    tags = {tuple(op["tags"]) for item in schema["paths"].values() for op in item.values()}
    assert tags == {("inference",), ("config",), ("experiment",), ("models",)}


def stub_served(types=None) -> ServedModel:
    types = types or dict.fromkeys(IRIS_ROW, "double")
    return ServedModel(
        name="Iris", version="1", features=tuple(FeatureSpec(n, t) for n, t in types.items()), estimator=StubModel()
    )


@pytest.mark.parametrize(
    "example",
    [
        pd.DataFrame([IRIS_ROW, {**IRIS_ROW, "petal_length": 5.0}]),
        {name: [value, 9.9] for name, value in IRIS_ROW.items()},
        IRIS_ROW,
        np.array([list(IRIS_ROW.values()), [9.9] * 4]),
    ],
    ids=["dataframe", "dict of lists", "dict", "ndarray"],
)
def test_warm_up_predicts_the_first_example_row(example):
    served = stub_served()
    assert warm_up(served, example) == WARM_UP_PREDICTIONS
    frames = served.estimator.frames
    assert len(frames) == WARM_UP_PREDICTIONS
    assert all(f.to_dict("records") == [IRIS_ROW] for f in frames)


def test_warm_up_skips_examples_it_cannot_read():
    served = stub_served()
    assert warm_up(served, "free text") == 0
    assert warm_up(served, pd.DataFrame(columns=list(IRIS_ROW))) == 0
    assert warm_up(served, np.array([1.0, 2.0])) == 0  # no column names and the wrong width
    assert served.estimator.frames == []


def test_warm_up_checks_the_example_against_the_signature():
    with pytest.raises(InvalidFeatures, match="petal_width"):
        warm_up(stub_served(), {k: v for k, v in IRIS_ROW.items() if k != "petal_width"})


def test_float32_columns_reject_numbers_a_float32_cannot_hold():
    served = stub_served({**dict.fromkeys(IRIS_ROW, "double"), "sepal_length": "float"})
    assert served.check({**IRIS_ROW, "sepal_length": 3.0e38})["sepal_length"] == 3.0e38
    with pytest.raises(InvalidFeatures) as err:
        served.check({**IRIS_ROW, "sepal_length": 1e39})
    assert err.value.extra["wrong_type"] == {"sepal_length": "expected float, got number out of range (|x| <= 3.4e+38)"}
