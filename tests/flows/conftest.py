"""Fixtures of the flow integration tests: a Prefect test server, a throwaway MLflow registry and a live router.

The router is the real app (`serving.app.create_app`) served by uvicorn on a free port; only its models are stubs:
it resolves the `champion`/`challenger` aliases in the test's MLflow registry like production does, and serves a
stub with a chosen behaviour for each version, so an A/B experiment can be given any outcome with a few requests.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import uvicorn

from contracts.api import Arm, ExperimentPlan
from contracts.auth import TOKEN_ENV
from contracts.registry import CHALLENGER, CHAMPION, TAG_LOOP_ID
from flows import settings as flow_settings
from flows.lib import ab_stats, registry
from flows.lib.data import IRIS_FEATURES, IRIS_TARGET
from flows.lib.router import RouterClient
from serving.app import create_app
from serving.services.assignment import assign_arm
from serving.services.models import FeatureSpec, ModelSource, ServedModel
from serving.services.store import Store
from serving.settings import RouterSettings
from tests.conftest import TRAINING_EXPERIMENT
from tests.serving.stubs import EventRecorder

SALT = "flow-tests"
TOKENS = {"admin": "flow-tests-admin", "label": "flow-tests-label", "read": "flow-tests-read"}
"""The router in these tests runs with tokens, as in production: the flows must send them."""

# --- MLflow ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_pipeline(iris: pd.DataFrame):
    """A small fitted sklearn pipeline: what gets registered (the router serves stubs in its place)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=200)).fit(iris[IRIS_FEATURES], iris[IRIS_TARGET])


@pytest.fixture
def registered(tracking_uri: str, model_name: str, iris: pd.DataFrame, tiny_pipeline) -> str:
    """`model_name` with versions 1 and 2 logged and registered, champion=1 and challenger=2 (recorded moves)."""
    registry.configure(tracking_uri, TRAINING_EXPERIMENT)
    for version in ("1", "2"):
        logged = registry.log_candidate(
            pipeline=tiny_pipeline,
            train_data=iris,
            reference=iris,
            target=IRIS_TARGET,
            model_name=model_name,
            params={"model": "lr"},
            metrics={"holdout_accuracy": 0.95},
            tags={TAG_LOOP_ID: f"loop-{int(version) - 1}"},  # as the retrain tags what it registers
            run_name=f"candidate {version}",
        )
        assert str(logged.version) == version
    registry.move_alias(model_name, CHAMPION, "1", reason="bootstrap", loop_id="loop-0")
    registry.move_alias(model_name, CHALLENGER, "2", reason="passed the quality gate", loop_id="loop-1")
    return model_name


# --- router ------------------------------------------------------------------------------------------------------

EASY, HARD, POISON = 5.0, 6.0, 7.0
"""Sepal lengths that mark a flower's kind: every stub is right on EASY, a weak one is wrong on HARD, a fragile one
raises on POISON. The true species follows the petal length (setosa below 2.5 cm, else versicolor)."""
KINDS = {"easy": EASY, "hard": HARD, "poison": POISON}


def flower(kind: str, i: int) -> tuple[dict[str, float], str]:
    """Features of the i-th flower of a kind, and its true species (alternating)."""
    setosa = i % 2 == 0
    features = {
        "sepal_length": KINDS[kind],
        "sepal_width": 3.0,
        "petal_length": 1.4 if setosa else 4.5,
        "petal_width": 0.2 if setosa else 1.5,
    }
    return features, "setosa" if setosa else "versicolor"


class FlowerModel:
    """Knows the true species; `weak` gets HARD flowers wrong, `fragile` raises on POISON, `delay` waits (seconds)
    and `burn_ms` spends CPU (milliseconds of this thread's CPU time) on each call, as a heavier model would."""

    def __init__(self, *, weak: bool = False, fragile: bool = False, delay: float = 0.0, burn_ms: float = 0.0) -> None:
        self.weak, self.fragile, self.delay, self.burn_ms = weak, fragile, delay, burn_ms

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        if self.delay:
            time.sleep(self.delay)
        if self.burn_ms:
            until = time.thread_time() + self.burn_ms / 1000
            while time.thread_time() < until:
                pass
        if self.fragile and (frame["sepal_length"] == POISON).any():
            raise RuntimeError("stub model: cannot score this flower")
        truth = np.where(frame["petal_length"] < 2.5, "setosa", "versicolor")
        return np.where(frame["sepal_length"] == HARD, "virginica", truth) if self.weak else truth


class StubbedSource(ModelSource):
    """The router's MLflow alias resolution on the test registry, with a stub model for each version."""

    def __init__(self, tracking_uri: str, model_name: str, models: dict[str, FlowerModel]) -> None:
        super().__init__(tracking_uri, model_name)
        self.models = models

    def load(self, version: str) -> ServedModel:
        features = tuple(FeatureSpec(name, "double") for name in IRIS_FEATURES)
        return ServedModel(name=self.model_name, version=version, features=features, estimator=self.models[version])


@dataclass
class Router:
    """A running router and what a test needs to drive it."""

    url: str
    settings: RouterSettings
    emitted: EventRecorder
    http: httpx.Client
    _next_user: int = 0

    def client(self) -> RouterClient:
        """The flows' client, with the flows' tokens."""
        return RouterClient(self.url, tokens=self.settings)

    def store(self) -> Store:
        """A second handle on the router's inference log (as a replica would open it)."""
        store = Store(self.settings.store_url())
        store.open()
        return store

    def users(self, arm: Arm, split_b: float) -> Iterator[str]:
        """Fresh user ids that the router's deterministic hash sends to `arm` at this split."""
        while True:
            self._next_user += 1
            user = f"user-{self._next_user}"
            if assign_arm(user, salt=SALT, split_b=split_b, has_challenger=True) == arm:
                yield user

    def interleave(self, seconds: float, *, labelled_kind: str = "hard", split_b: float = 0.5) -> int:
        """Alternate labelled requests of both arms for `seconds`, so both arms fill the same time buckets.

        Returns:
            Requests sent per arm.
        """
        deadline, sent = time.monotonic() + seconds, 0
        while time.monotonic() < deadline:
            for arm in ("champion", "challenger"):
                self.send(arm, labelled_kind, 1, split_b=split_b, offset=sent)
            sent += 1
        return sent

    def fill_buckets(
        self,
        buckets: int,
        *,
        bucket_seconds: int,
        per_bucket: int = 8,
        labelled_kind: str = "hard",
        timeout: float = 300.0,
    ) -> int:
        """Alternate labelled requests of both arms until `buckets` time buckets each hold `per_bucket` of each arm.

        However busy the machine (a request can take most of a second), the latency guardrail then has the matched
        buckets it needs; a quiet machine gets there in `buckets * bucket_seconds` seconds.

        Returns:
            Requests sent per arm.
        """
        deadline, sent, filled = time.monotonic() + timeout, 0, {}
        while sum(n >= per_bucket for n in filled.values()) < buckets:
            assert time.monotonic() < deadline, f"only {filled} pairs per bucket after {timeout:.0f} s"
            for arm in ("champion", "challenger"):
                self.send(arm, labelled_kind, 1, offset=sent)
            sent += 1
            bucket = int(time.time() // bucket_seconds)
            filled[bucket] = filled.get(bucket, 0) + 1
        return sent

    def send(
        self, arm: Arm, kind: str, n: int, *, labelled: int | None = None, split_b: float = 0.5, offset: int = 0
    ) -> list[int]:
        """Send `n` flowers of a kind from users of `arm`, the first `labelled` (default all) with their label.

        Returns:
            The status codes (200 answered, 500 the model raised: the router records it against the arm).
        """
        labelled = n if labelled is None else labelled
        users = self.users(arm, split_b)
        codes = []
        for i in range(n):
            features, species = flower(kind, offset + i)
            body = {"user_id": next(users), "features": features} | ({"label": species} if i < labelled else {})
            response = self.http.post("/predict", json=body)
            assert response.status_code in (200, 500), response.text
            served = response.json() if response.status_code == 200 else response.json()["extra"]
            assert served["arm"] == arm, served
            codes.append(response.status_code)
        return codes


@pytest.fixture
def start_router(
    tmp_path: Path, tracking_uri: str, model_name: str
) -> Iterator[Callable[[dict[str, FlowerModel]], Router]]:
    """Start the real router app on a free port, serving the given stub per version; stopped after the test."""
    started: list[tuple[uvicorn.Server, threading.Thread, httpx.Client]] = []

    def start(models: dict[str, FlowerModel]) -> Router:
        settings = RouterSettings(
            _env_file=None,
            home=tmp_path / "router",
            mlflow_tracking_uri=tracking_uri,
            router_store_url=f"sqlite:///{tmp_path / 'router.db'}",
            model_name=model_name,
            ab_split_b=0.5,
            assignment_salt=SALT,
            fresh_salt_per_experiment=False,  # tests pick users per arm with the settings' salt
            model_refresh_seconds=0,  # aliases are re-read at start, on /models/reload and when an experiment ends
            outbox_interval_seconds=0.2,
            router_admin_token=TOKENS["admin"],
            router_label_token=TOKENS["label"],
            router_read_token=TOKENS["read"],
        )
        emitted = EventRecorder()
        app = create_app(
            settings,
            model_source=StubbedSource(tracking_uri, model_name, models),
            store=Store(settings.store_url()),
            event_emitter=emitted,
        )
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))  # handed to uvicorn bound: no race for the port
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        # The traffic of these tests labels inline: it carries the label token, as the simulator does.
        http = httpx.Client(base_url=url, timeout=10.0, headers={"Authorization": f"Bearer {TOKENS['label']}"})
        started.append((server, thread, http))
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.TransportError):
                if http.get("/health").status_code in (200, 503):
                    break
            assert time.monotonic() < deadline and thread.is_alive(), "the router did not come up"
            time.sleep(0.05)
        return Router(url=url, settings=settings, emitted=emitted, http=http)

    yield start
    for server, thread, http in started:
        http.close()
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def flow_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tracking_uri: str) -> Iterator[Callable[[Router], Path]]:
    """Point the flows' settings at a router, the test registry and a home under tmp_path; returns that home."""
    home = tmp_path / "home"

    def point(router: Router) -> Path:
        monkeypatch.setenv("DRIFTLOOP_ROUTER_URL", router.url)
        monkeypatch.setenv("DRIFTLOOP_MLFLOW_TRACKING_URI", tracking_uri)
        monkeypatch.setenv("DRIFTLOOP_HOME", str(home))
        for kind, token in TOKENS.items():
            monkeypatch.setenv(TOKEN_ENV[kind], token)
        flow_settings.get_settings.cache_clear()
        return home

    yield point
    flow_settings.get_settings.cache_clear()


def make_plan(**changes: Any) -> ExperimentPlan:
    """A plan for v1 vs v2 as the retrain flow makes it: 50/50 split, a 20-point lift from a 50% baseline."""
    sequential_n, fixed_n = ab_stats.plan_sample_size(baseline=0.5, mde=0.2, alpha=0.05, power=0.8)
    values: dict[str, Any] = {
        "champion_version": "1",
        "challenger_version": "2",
        "alpha": 0.05,
        "power": 0.8,
        "mde": 0.2,
        "baseline": 0.5,
        "min_samples_per_arm": sequential_n,
        "fixed_horizon_samples_per_arm": fixed_n,
        "ab_split_b": 0.5,
        "max_duration_hours": 24.0,
        "srm_threshold": 0.005,
        "guardrail_error_margin": 0.2,  # tens of requests per arm cannot show a tighter error non-inferiority
        "guardrail_latency_margin": 0.5,
        "guardrail_latency_slack_ms": 5.0,
        "guardrail_latency_bucket_seconds": 1,
        "loop_id": "loop-1",
    }
    return ExperimentPlan(**(values | changes))
