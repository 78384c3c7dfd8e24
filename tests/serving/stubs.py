"""Stand-ins for a model registry and its models, shared by the router tests and the live router they start."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from contracts.api import ExperimentPlan
from serving.services.models import FeatureSpec, ServedModel

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
