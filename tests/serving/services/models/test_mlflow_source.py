"""The real MLflow ModelSource behind the app, on a SQLite tracking store in tmp_path."""

import logging

import numpy as np
import pandas as pd
import pytest
from litestar.testing import AsyncTestClient

from contracts.registry import CHALLENGER, CHAMPION
from serving.app import create_app
from serving.services.models import WARM_UP_PREDICTIONS, ModelSource, ServedModel
from serving.services.store import Store

pytestmark = pytest.mark.slow

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def iris_like(rows: int = 90) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame(rng.uniform([4.3, 2.0, 1.0, 0.1], [7.9, 4.4, 6.9, 2.5], size=(rows, 4)), columns=COLUMNS)


def register(tracking_uri: str, experiment_id: str, model, X, y, input_example=None) -> str:
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    # The fluent logging API only reads the global tracking URI; set it for this block only.
    with _use_tracking_uri(tracking_uri), mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(X, y),
            input_example=input_example,
            serialization_format="cloudpickle",
            pip_requirements=["scikit-learn"],
            registered_model_name="Iris",
        )
    return str(info.registered_model_version)


async def test_real_registry_champion_then_both_arms(tmp_path, monkeypatch, settings):
    from mlflow import MlflowClient
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment("router-test", artifact_location=(tmp_path / "artifacts").as_uri())

    X = iris_like()
    y_names = np.where(X["petal_length"] < 2.5, "setosa", "versicolor")
    v1 = register(
        tracking_uri,
        experiment_id,
        Pipeline([("scale", StandardScaler()), ("tree", DecisionTreeClassifier(random_state=0))]).fit(X, y_names),
        X,
        y_names,
    )
    client.set_registered_model_alias("Iris", CHAMPION, v1)

    settings = settings.model_copy(update={"mlflow_tracking_uri": tracking_uri, "ab_split_b": 0.5})
    setosa = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    async with AsyncTestClient(app=create_app(settings, store=Store(settings.store_url()))) as router:
        assert (await router.get("/health")).json()["champion_version"] == v1
        served = (await router.post("/predict", json={"user_id": "u0", "features": setosa})).json()
        assert {k: served[k] for k in ("prediction", "model_version", "arm", "experiment_id")} == {
            "prediction": "setosa",
            "model_version": v1,
            "arm": "champion",
            "experiment_id": f"v{v1}",
        }
        # The schema comes from the real signature.
        bad = await router.post("/predict", json={"user_id": "u0", "features": {**setosa, "petal_colour": 1}})
        assert bad.status_code == 422 and "petal_colour" in bad.json()["detail"]

        # A second version with integer labels becomes challenger; reload serves both arms.
        y_ints = (X["petal_width"] > 1.0).astype(int).to_numpy()
        v2 = register(
            tracking_uri,
            experiment_id,
            Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression())]).fit(X, y_ints),
            X,
            y_ints,
        )
        client.set_registered_model_alias("Iris", CHALLENGER, v2)
        reloaded = (await router.post("/models/reload")).json()
        assert (reloaded["champion_version"], reloaded["challenger_version"]) == (v1, v2)

        served = [
            (await router.post("/predict", json={"user_id": f"u{i}", "features": setosa})).json() for i in range(40)
        ]
        by_arm = {
            arm: {(s["model_version"], s["prediction"]) for s in served if s["arm"] == arm}
            for arm in ("champion", "challenger")
        }
        assert by_arm == {"champion": {(v1, "setosa")}, "challenger": {(v2, 0)}}
        assert {s["experiment_id"] for s in served} == {f"v{v1}-vs-v{v2}"}
        outcomes = (await router.get("/experiment/outcomes")).json()
        assert [(a["arm"], a["model_version"]) for a in outcomes["arms"]] == [("champion", v1), ("challenger", v2)]
        assert sum(a["requests"] for a in outcomes["arms"]) == 40


def test_load_warms_a_version_up_on_its_input_example(tmp_path, monkeypatch, caplog):
    from mlflow import MlflowClient
    from sklearn.tree import DecisionTreeClassifier

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment_id = MlflowClient(tracking_uri).create_experiment(
        "warm-up", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    X = iris_like()
    y = np.where(X["petal_length"] < 2.5, "setosa", "versicolor")
    tree = DecisionTreeClassifier(random_state=0).fit(X, y)
    with_example = register(tracking_uri, experiment_id, tree, X, y, input_example=X.head(3))
    without_example = register(tracking_uri, experiment_id, tree, X, y)

    # Count the predictions made while loading, through the path live requests take.
    seen: list[tuple[str, dict]] = []
    predict = ServedModel.predict

    def counting(self, row):
        seen.append((self.version, dict(row)))
        return predict(self, row)

    monkeypatch.setattr(ServedModel, "predict", counting)
    source = ModelSource(tracking_uri, "Iris")
    source.open()
    try:
        with caplog.at_level(logging.DEBUG, logger="serving.services.models"):
            served = source.load(with_example)
            assert [v for v, _ in seen] == [with_example] * WARM_UP_PREDICTIONS
            first = X.iloc[0].to_dict()
            assert all(row == first for _, row in seen)

            seen.clear()
            source.load(with_example)  # cached: no second warm-up
            assert seen == []
            source.load(without_example)
            assert seen == []
            assert f"Iris v{without_example} has no input example: no warm-up" in caplog.text

            # A failing warm-up is logged and never blocks the load.
            def broken(self, row):
                raise RuntimeError("cold model fell over")

            monkeypatch.setattr(ServedModel, "predict", broken)
            source.close()
            source.open()
            reloaded = source.load(with_example)
        assert reloaded.version == served.version == with_example
        warnings = [
            r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("serving.services.models")
        ]
        assert [r.getMessage() for r in warnings] == [
            # Without an example (and so without a prediction) the tree's classes_ cannot be checked.
            f"Iris v{without_example}: classes unknown (no driftloop.classes tag): labels are not checked",
            f"Iris v{with_example}: warm-up on its input example failed (loading anyway): "
            "RuntimeError: cold model fell over",
            f"Iris v{with_example}: classes unknown (no driftloop.classes tag): labels are not checked",
        ]
        # With a working warm-up, the tree's own classes were trusted: they contain what it predicted.
        assert served.classes == frozenset({"setosa", "versicolor"})
    finally:
        source.close()
