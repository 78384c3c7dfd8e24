"""Fixtures every part of the suite shares: the session's Prefect test server, iris, a throwaway MLflow store.

Fixtures that mean the same thing everywhere live here, once; a folder's conftest adds only what is its own
(`tests/flows`: a live router with stub models; `tests/serving`: the router app with stub sources;
`tests/flows/lib`: one PyCaret training shared by the library tests).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow
import mlflow.tracking.fluent
import pandas as pd
import pytest
from mlflow import MlflowClient

from contracts.registry import AB_EXPERIMENT, ALIAS_HISTORY_EXPERIMENT
from flows.lib.data import IRIS_TARGET, load_dataset

TRAINING_EXPERIMENT = "driftloop"
"""The flows' default `mlflow_experiment`."""

# --- the end-to-end demos -------------------------------------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The end-to-end tests run last: their demos start when collection ends and run while the other tests do."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start, in the background, each demo whose e2e tests the session selected (`tests/e2e/launch.py`)."""
    if session.config.option.collectonly:
        return
    from tests.e2e import launch

    for kind in sorted({launch.MODULES.get(item.path.name) for item in session.items} - {None}):
        launch.demo_for(kind)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop whatever demo still runs and drop its databases."""
    import sys

    launch = sys.modules.get("tests.e2e.launch")
    if launch is not None:
        launch.stop_all()


# --- Prefect ---------------------------------------------------------------------------------------------------

_HARNESS: dict[str, str] = {}
"""The one harness of the session. tests/automations re-exports the fixture below: pytest then keeps one fixture per
conftest, and this module-level record makes both use the same server instead of starting a second one."""


@pytest.fixture(scope="session")
def prefect_harness(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real Prefect server (subprocess, temporary SQLite) that this process's flows, events and clients use.

    Returns:
        Its API URL. It is not exported to subprocesses: pass it explicitly to any.
    """
    if "api_url" in _HARNESS:
        return _HARNESS["api_url"]
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    stack = contextlib.ExitStack()
    # Torn down when pytest unconfigures, after every session fixture of every conftest that uses it.
    request.config.add_cleanup(stack.close)
    saved = os.environ.get("DO_NOT_TRACK")
    os.environ["DO_NOT_TRACK"] = "1"  # the server subprocess inherits the environment: no telemetry offline
    stack.callback(lambda: os.environ.pop("DO_NOT_TRACK") if saved is None else os.environ.update(DO_NOT_TRACK=saved))
    stack.enter_context(
        temporary_settings(
            updates={
                PREFECT_HOME: tmp_path_factory.mktemp("prefect-home"),
                PREFECT_SERVER_ANALYTICS_ENABLED: False,
                # Events reach the database within half a second instead of five, so tests poll briefly.
                PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL: 0.5,
            }
        )
    )
    # A busy 2-core machine (a retrain or other tests beside this run) has taken over 60 s to start it.
    stack.enter_context(prefect_test_harness(server_startup_timeout=240))
    _HARNESS["api_url"] = PREFECT_API_URL.value()
    stack.callback(_HARNESS.clear)
    return _HARNESS["api_url"]


def read_events(resource_id: str, names: list[str], *, expect: int, timeout: float = 10.0) -> list[Any]:
    """The events named `names` about one resource, oldest first, once at least `expect` of them have landed.

    Events reach the server through a background worker and its persister in batches: poll until they are there.
    """
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_events(
                EventFilter(
                    # `until` defaults to the filter's creation: build one per poll.
                    occurred=EventOccurredFilter(since=datetime.now(UTC) - timedelta(hours=1), until=datetime.now(UTC)),
                    event=EventNameFilter(name=names),
                    resource=EventResourceFilter(id=[resource_id]),
                ),
                limit=50,
            )
            found = sorted(page.events, key=lambda e: e.occurred)
            if len(found) >= expect or time.monotonic() > deadline:
                return found
            time.sleep(0.25)


# --- data and MLflow ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def iris() -> pd.DataFrame:
    """The iris dataset as the flows load it (features and target)."""
    return load_dataset("iris", IRIS_TARGET)


@pytest.fixture
def model_name() -> str:
    """A registered model name of this test alone (Prefect events of every test land on one server)."""
    return f"IrisAB{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database with its schema created (the migrations take most of a second: run them once)."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_mlflow_db: Path) -> Iterator[str]:
    """A real MLflow store (SQLite and local artifacts under tmp_path) as the process's tracking URI.

    The experiments the flows write to are created up front with their artifacts under tmp_path; MLflow's
    globals and MLFLOW_* variables are restored afterwards.
    """
    with pytest.MonkeyPatch.context() as mp, temporary_mlflow(tmp_path, mp, empty_mlflow_db) as uri:
        yield uri


@pytest.fixture(scope="module")
def module_mlflow_store(tmp_path_factory: pytest.TempPathFactory, empty_mlflow_db: Path) -> Iterator[str]:
    """The same store as `tracking_uri`, kept for a whole module (tests that build on each other's registrations)."""
    with (
        pytest.MonkeyPatch.context() as mp,
        temporary_mlflow(tmp_path_factory.mktemp("mlflow"), mp, empty_mlflow_db) as uri,
    ):
        yield uri


@contextlib.contextmanager
def temporary_mlflow(folder: Path, mp: pytest.MonkeyPatch, empty_db: Path) -> Iterator[str]:
    """A SQLite MLflow store with local artifacts under `folder`, as the process's tracking URI, with the
    experiments the flows write to; MLflow's globals and MLFLOW_* variables are restored afterwards."""
    root = folder / "mlflow"
    root.mkdir()
    shutil.copyfile(empty_db, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    saved_env = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    mp.chdir(folder)  # anything MLflow writes relative to the cwd lands here, not in the repo
    mp.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # whatever an earlier test left as the process's registry
    client = MlflowClient()
    for name in (TRAINING_EXPERIMENT, AB_EXPERIMENT, ALIAS_HISTORY_EXPERIMENT):
        client.create_experiment(name, artifact_location=(root / "artifacts" / name).as_uri())
    try:
        yield uri
    finally:
        if mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
            del os.environ[key]
        os.environ.update(saved_env)
