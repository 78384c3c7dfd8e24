"""MLflow faults on the real model source: the registry down at start, down while serving, an artifact that fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from litestar.testing import AsyncTestClient

from contracts.registry import CHALLENGER, CHAMPION
from serving.app import create_app
from serving.services.models import ModelSource
from serving.services.store import Store
from tests.serving.conftest import IRIS_ROW, free_port
from tests.serving.services.models.test_mlflow_source import iris_like, register

pytestmark = pytest.mark.slow


@pytest.fixture
def fail_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's client retries for minutes by default; `python -m serving` caps it, and so do these tests."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


def no_uri(text: str, *hosts: str) -> bool:
    return "://" not in text and not any(host in text for host in hosts)


async def test_mlflow_down_at_start(settings, fail_fast):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = settings.model_copy(update={"mlflow_tracking_uri": url})
    app = create_app(settings, model_source=ModelSource(url, "Iris"), store=Store(settings.store_url()))
    async with AsyncTestClient(app=app) as client:
        health = await client.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "no_model"
        [reason] = health.json()["reasons"]
        assert reason == "the registry could not be read: MlflowException (details in the router log)"
        predict = await client.post("/predict", json={"user_id": "u", "features": IRIS_ROW})
        assert predict.status_code == 503
        reload = await client.post("/models/reload")
        assert reload.status_code == 503
        assert (await client.get("/ready")).status_code == 503
        for response in (health, predict, reload):
            assert no_uri(response.text, "127.0.0.1"), response.text


class MlflowServer:
    """`mlflow server` on a free port with a SQLite store and local artifacts (its job runner off)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [
            str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", (self.root / "artifacts").as_uri(), "--serve-artifacts",
        ]  # fmt: skip
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        log = (self.root / "server.log").open("ab")
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while True:
            assert self.process.poll() is None, (self.root / "server.log").read_text()[-2000:]
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.25)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path / "mlflow")
    server.root.mkdir()
    server.start()
    yield server
    server.kill()


async def test_a_challenger_that_cannot_load_and_mlflow_down_while_serving(mlflow_server, settings, fail_fast):
    from mlflow import MlflowClient
    from sklearn.tree import DecisionTreeClassifier

    client = MlflowClient(mlflow_server.url)
    experiment_id = client.create_experiment("router-faults")
    X = iris_like()
    y = np.where(X["petal_length"] < 2.5, "setosa", "versicolor")
    v1 = register(mlflow_server.url, experiment_id, DecisionTreeClassifier(random_state=0).fit(X, y), X, y)
    v2 = register(mlflow_server.url, experiment_id, DecisionTreeClassifier(random_state=1).fit(X, y), X, y)
    client.set_registered_model_alias("Iris", CHAMPION, v1)
    client.set_registered_model_alias("Iris", CHALLENGER, v2)
    # The challenger's artifact is damaged in the artifact store: it downloads, but does not unpickle.
    download_uri = client.get_model_version_download_uri("Iris", v2)
    artifacts = mlflow_server.root / "artifacts" / download_uri.removeprefix("mlflow-artifacts:/")
    [pickled] = list(artifacts.rglob("model.pkl"))
    pickled.write_bytes(b"not a pickle")

    settings = settings.model_copy(update={"mlflow_tracking_uri": mlflow_server.url})
    source = ModelSource(mlflow_server.url, "Iris")
    app = create_app(settings, model_source=source, store=Store(settings.store_url()))
    async with AsyncTestClient(app=app) as router:
        health = (await router.get("/health")).json()
        assert (health["status"], health["champion_version"], health["challenger_version"]) == ("degraded", v1, None)
        [reason] = health["reasons"]
        assert reason == (
            f"challenger v{v2} failed to load: UnpicklingError (details in the router log); "
            "the champion serves every user"
        )
        served = [
            (await router.post("/predict", json={"user_id": f"u{i}", "features": IRIS_ROW})).json() for i in range(10)
        ]
        assert {(s["arm"], s["model_version"]) for s in served} == {("champion", v1)}

        mlflow_server.kill()  # the registry goes away while the router serves
        reload = await router.post("/models/reload")
        assert reload.status_code == 503
        assert no_uri(reload.text, "127.0.0.1"), reload.text
        health = (await router.get("/health")).json()
        assert (health["status"], health["champion_version"]) == ("degraded", v1)
        assert health["reasons"][0].startswith("the registry could not be read")
        predict = await router.post("/predict", json={"user_id": "u", "features": IRIS_ROW})
        assert (predict.status_code, predict.json()["model_version"]) == (200, v1)
        metrics = (await router.get("/metrics")).text
    assert 'driftloop_router_model_load_failures_total{alias="challenger"} 1.0' in metrics
