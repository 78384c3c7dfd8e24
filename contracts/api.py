"""The router's HTTP API: request and response shapes shared by the router and its clients (flows, simulator)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

Arm = Literal["champion", "challenger"]
"""Which side of the experiment served a request."""

FeatureValue = str | int | float | bool
Label = str | int
"""Labels travel as strings or integers; the router compares them as strings."""

UserId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Split = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class PredictRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One prediction for one user; `label` may come inline when it is already known."""

    user_id: UserId
    features: dict[str, FeatureValue]
    label: Label | None = None


class PredictResponse(msgspec.Struct, kw_only=True):
    """The prediction, and which model version and arm served it."""

    request_id: str
    prediction: Label
    model_name: str
    model_version: str
    arm: Arm
    experiment_id: str


class FeedbackRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A label that arrives after the prediction."""

    request_id: RequestId
    label: Label


class FeedbackResponse(msgspec.Struct, kw_only=True):
    """The stored outcome of a labelled request."""

    request_id: str
    label: str
    prediction: str
    correct: bool
    arm: Arm
    model_version: str


class RouterConfig(msgspec.Struct, kw_only=True):
    """The router's run-time configuration."""

    ab_split_b: float
    """Share of users (0..1) sent to the challenger while one exists."""


class ConfigUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A change of the run-time configuration."""

    ab_split_b: Split


class ArmOutcome(msgspec.Struct, kw_only=True):
    """What one arm of the current experiment served and how it did."""

    arm: Arm
    model_version: str
    requests: int
    labelled: int
    correct: int
    incorrect: int


class Outcomes(msgspec.Struct, kw_only=True):
    """Outcome counts per arm for the current experiment (champion version vs challenger version)."""

    model_name: str
    experiment_id: str
    champion_version: str
    challenger_version: str | None
    ab_split_b: float
    arms: list[ArmOutcome]

    def arm(self, name: Arm) -> ArmOutcome | None:
        """The outcome of one arm, or None when that arm served nothing."""
        return next((a for a in self.arms if a.arm == name), None)


class InferenceRecord(msgspec.Struct, kw_only=True):
    """One logged prediction, as the inference log returns it."""

    request_id: str
    ts: datetime
    user_id: str
    arm: Arm
    model_version: str
    experiment_id: str
    features: dict[str, FeatureValue]
    prediction: str
    label: str | None
    latency_ms: float


class InferencePage(msgspec.Struct, kw_only=True):
    """A page of the inference log, newest first."""

    records: list[InferenceRecord]


class Health(msgspec.Struct, kw_only=True):
    """Liveness plus which versions the router is serving."""

    status: Literal["ok", "no_model"]
    model_name: str
    champion_version: str | None
    challenger_version: str | None


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every client error: a status code and what was wrong."""

    status_code: int
    detail: str
    extra: dict[str, object] | list[object] | None = None
