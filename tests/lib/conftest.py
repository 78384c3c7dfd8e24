"""Fixtures of the batch-side library tests: iris, one trained PyCaret pipeline, a throwaway MLflow store."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from flows.lib.data import IRIS_FEATURES, IRIS_TARGET, load_dataset


@pytest.fixture(scope="session")
def iris() -> pd.DataFrame:
    return load_dataset("iris", IRIS_TARGET)


@pytest.fixture(scope="session")
def iris_features() -> list[str]:
    return list(IRIS_FEATURES)


@pytest.fixture(scope="session")
def train_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working directory PyCaret runs in (checked afterwards for a stray logs.log)."""
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="session")
def trained(iris: pd.DataFrame, train_dir: Path):
    """One training run on iris, shared by the training and registry tests (PyCaret is slow to start)."""
    from flows.lib.training import train

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(train_dir)
        return train(iris, IRIS_TARGET, models=["lr", "dt"], folds=3, session_id=42)


@pytest.fixture(scope="module")
def mlflow_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real MLflow store (SQLite + local artifacts) in a temporary folder, as the current experiment.

    Parametrized indirectly with "postgresql", the backend store is a database created on the real PostgreSQL
    server for the module (and dropped after); the artifacts stay local.
    """
    import mlflow
    import mlflow.tracking.fluent

    from flows.lib import registry

    root = tmp_path_factory.mktemp("mlflow")
    saved_env = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    with contextlib.ExitStack() as stack:
        if getattr(request, "param", "sqlite") == "postgresql":
            from tests.postgres import require_server, temporary_database, with_driver

            require_server()
            uri = with_driver(stack.enter_context(temporary_database("driftloop_mlflow_test")), "psycopg")
        else:
            uri = f"sqlite:///{root}/mlflow.db"
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        mp.chdir(root)  # anything MLflow writes relative to the cwd lands here, not in the repo
        mp.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
        mlflow.set_tracking_uri(uri)
        mlflow.create_experiment("driftloop-test", artifact_location=(root / "artifacts").as_uri())
        registry.configure(uri, "driftloop-test")
        try:
            yield root
        finally:
            if mlflow.active_run() is not None:
                mlflow.end_run()
            mlflow.set_tracking_uri(None)
            for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
                del os.environ[key]
            os.environ.update(saved_env)
