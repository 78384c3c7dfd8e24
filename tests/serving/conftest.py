"""Router test fixtures: stub model source, settings on a temp SQLite store, captured events, app factory, `client`."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from contracts.api import ExperimentPlan
from serving.app import create_app
from serving.services.models import FeatureSpec, ServedModel
from serving.services.store import Store
from serving.settings import RouterSettings

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")


class StubModel:
    """A tiny model: setosa below a petal-length threshold, else `other`; remembers every frame it saw."""

    def __init__(self, other: str = "versicolor") -> None:
        self.other = other
        self.frames: list[pd.DataFrame] = []

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        self.frames.append(frame)
        return np.where(frame["petal_length"] < 2.5, "setosa", self.other)


class BrokenModel:
    """A model that raises on every call, as a model with a bad artifact or a missing dependency would."""

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        raise RuntimeError("model artifact is corrupt")


class StubSource:
    """In-memory registry: `aliases` maps alias to version; every version serves a `StubModel`."""

    def __init__(self, model_name: str = "Iris", **aliases: str) -> None:
        self.model_name = model_name
        self.aliases: dict[str, str] = aliases
        self.models: dict[str, StubModel | BrokenModel] = {}
        self.loads: Counter[str] = Counter()
        self.broken = False
        self.failing: set[str] = set()
        """Versions whose model raises on every prediction."""
        self.unloadable: set[str] = set()
        """Versions whose artifact cannot be loaded."""
        self.plans: dict[str, ExperimentPlan] = {}
        """Plan tags by version."""
        self.classes: frozenset[str] | None = frozenset({"setosa", "versicolor", "virginica"})
        self.opened = False

    def open(self) -> None:
        self.opened = True

    def close(self) -> None:
        self.opened = False

    def resolve(self, alias: str) -> str | None:
        if self.broken:
            raise ConnectionError("registry unreachable")
        return self.aliases.get(alias)

    def plan(self, version: str) -> ExperimentPlan | None:
        if self.broken:
            raise ConnectionError("registry unreachable")
        return self.plans.get(version)

    def load(self, version: str) -> ServedModel:
        self.loads[version] += 1
        if version in self.unloadable:
            raise OSError(f"cannot unpickle the artifact of v{version}: file:///secret/artifacts/{version}/model.pkl")
        # Even versions predict virginica for large petals, odd ones versicolor: arms are tellable apart.
        model = self.models.setdefault(
            version,
            BrokenModel()
            if version in self.failing
            else StubModel("virginica" if int(version) % 2 == 0 else "versicolor"),
        )
        features = tuple(FeatureSpec(name, "double") for name in FEATURES)
        return ServedModel(
            name=self.model_name, version=version, features=features, estimator=model, classes=self.classes
        )


@pytest.fixture
def iris() -> dict[str, float]:
    """Features of one setosa flower."""
    return {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "router.db"


@pytest.fixture
def settings(tmp_path: Path, db_path: Path) -> RouterSettings:
    return RouterSettings(
        _env_file=None,
        home=tmp_path,
        router_store_url=f"sqlite:///{db_path}",
        model_name="Iris",
        ab_split_b=0.5,
        assignment_salt="test-salt",
        model_refresh_seconds=0,
        outbox_interval_seconds=0,
    )


@pytest.fixture
def source() -> StubSource:
    """A registry with champion v1 and challenger v2."""
    return StubSource(champion="1", challenger="2")


class EventRecorder:
    """Stands in for the Prefect emitter: keeps every event; `fail` makes the next calls raise."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.fail = False

    def __call__(
        self,
        *,
        event: str,
        resource: dict[str, str],
        related: list[dict[str, str]],
        payload: dict[str, Any],
        event_id: str,
    ) -> None:
        if self.fail:
            raise ConnectionError("prefect unreachable")
        self.events.append({"event": event, "resource": resource, "related": related, "payload": payload})
        self.ids.append(event_id)


@pytest.fixture
def emitted() -> EventRecorder:
    """The events every app built by `make_app` emitted (shared by replicas)."""
    return EventRecorder()


@pytest.fixture
def make_app(settings: RouterSettings, source: StubSource, emitted: EventRecorder) -> Callable[..., Litestar]:
    """Build an app; each call opens its own `Store` on the same database file (like a replica or a restart)."""

    def make(*, source: StubSource = source, settings: RouterSettings = settings, **changes: object) -> Litestar:
        settings = settings.model_copy(update=changes) if changes else settings
        return create_app(settings, model_source=source, store=Store(settings.store_url()), event_emitter=emitted)

    return make


@pytest.fixture
async def client(make_app: Callable[..., Litestar]) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=make_app()) as client:
        yield client


@pytest.fixture
def make_source() -> type[StubSource]:
    """The stub registry class, for tests that need their own aliases."""
    return StubSource
