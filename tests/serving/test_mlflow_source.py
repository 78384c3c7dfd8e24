"""The real MLflow ModelSource behind the app, on a SQLite tracking store in tmp_path."""

import numpy as np
import pandas as pd
import pytest
from litestar.testing import AsyncTestClient

from contracts.registry import CHALLENGER, CHAMPION
from serving.app import create_app
from serving.services.store import Store

pytestmark = pytest.mark.slow

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def iris_like(rows: int = 90) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame(rng.uniform([4.3, 2.0, 1.0, 0.1], [7.9, 4.4, 6.9, 2.5], size=(rows, 4)), columns=COLUMNS)


def register(tracking_uri: str, experiment_id: str, model, X, y) -> str:
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
