"""Fixtures of the batch-side library tests: one trained PyCaret pipeline and the registry on a module's MLflow store
(iris and the store itself come from tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from flows.lib.data import IRIS_FEATURES, IRIS_TARGET
from tests.conftest import TRAINING_EXPERIMENT


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
def configured_registry(module_mlflow_store: str) -> str:
    """`module_mlflow_store` as the registry's store and experiment, as a flow configures it when it starts."""
    from flows.lib import registry

    registry.configure(module_mlflow_store, TRAINING_EXPERIMENT)
    return module_mlflow_store
