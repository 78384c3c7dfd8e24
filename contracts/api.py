"""The router's HTTP API: request and response shapes shared by the router and its clients (flows, simulator)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal

import msgspec

Arm = Literal["champion", "challenger"]
"""Which side of the experiment served a request: each arm is named after the alias that serves it
(`contracts.registry.CHAMPION`, `contracts.registry.CHALLENGER`); code names an arm through those constants."""

MAX_FEATURES = 256
"""Most features one request may carry."""
MAX_TEXT = 1024
"""Longest string feature value or label."""
MAX_REASON = 2000
"""Longest free-text reason (the end of an experiment)."""
PAGE_MAX = 10_000
"""Largest page of the inference log."""

FeatureName = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
FeatureValue = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)] | int | float | bool
Label = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)] | int
"""Labels travel as strings or integers; the router compares them as strings."""

UserId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | int
"""Strings or integers (clients written for classic routers send integers); stored as strings."""
RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
IdempotencyKey = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Version = Annotated[str, msgspec.Meta(max_length=64)]
"""A registered model version as MLflow writes it (`"3"`)."""
Split = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


def experiment_id(champion_version: str, challenger_version: str | None = None) -> str:
    """The id of the experiment of a champion/challenger pair (`v{champion}-vs-v{challenger}`); with no
    challenger, `v{champion}`: the id under which the champion's own traffic is logged."""
    if challenger_version is None:
        return f"v{champion_version}"
    return f"v{champion_version}-vs-v{challenger_version}"


DecisionName = Literal["PROMOTE", "ROLLBACK", "CONTINUE", "INVALID"]
"""What an A/B look decides: move `champion` to the challenger, drop the challenger, keep going, or stop trusting
the experiment (a sample-ratio mismatch)."""
Ending = Literal["PROMOTE", "ROLLBACK"]
"""The decisions that end an experiment."""
PROMOTE: Final = "PROMOTE"
"""Move `champion` to the challenger."""
ROLLBACK: Final = "ROLLBACK"
"""Drop the challenger (or, after a promotion, move `champion` back)."""
CONTINUE: Final = "CONTINUE"
"""Not enough evidence yet: keep the experiment running."""
INVALID: Final = "INVALID"
"""The assignment is broken (a sample-ratio mismatch): the experiment's counts cannot be trusted."""


ROUTE_PREDICT = "/predict"
"""POST a `PredictRequest`, get a `PredictResponse`."""
ROUTE_PREDICT_BATCH = f"{ROUTE_PREDICT}/batch"
"""POST a `PredictBatchRequest` (many rows), get a `PredictBatchResponse` (one item per row)."""
ROUTE_FEEDBACK = "/feedback"
"""POST a `FeedbackRequest` (a label for an earlier request), get a `FeedbackResponse`."""
ROUTE_INFERENCES = "/inferences"
"""GET an `InferencePage` of logged requests (read token)."""
ROUTE_CONFIG = "/config"
"""GET the `RouterConfig`; POST a `ConfigUpdate` (admin token)."""
ROUTE_EXPERIMENT = "/experiment"
"""GET the current `Experiment`."""
ROUTE_EXPERIMENT_PLAN = f"{ROUTE_EXPERIMENT}/plan"
"""PUT the `ExperimentPlan` of the experiment of a challenger (admin token)."""
ROUTE_EXPERIMENT_END = f"{ROUTE_EXPERIMENT}/end"
"""POST an `ExperimentEnd` (admin token)."""
ROUTE_EXPERIMENT_PAUSE = f"{ROUTE_EXPERIMENT}/pause"
"""POST an `ExperimentPause`: the champion serves everyone until a resume (admin token)."""
ROUTE_EXPERIMENT_RESUME = f"{ROUTE_EXPERIMENT}/resume"
"""POST an `ExperimentPause` to resume a paused experiment (admin token)."""
ROUTE_EXPERIMENT_OUTCOMES = f"{ROUTE_EXPERIMENT}/outcomes"
"""GET the `Outcomes` per arm of the current experiment (read token)."""
ROUTE_HEALTH = "/health"
"""GET `Health`: which versions the router serves."""
ROUTE_READY = "/ready"
"""GET `Readiness`: whether this replica can take traffic."""
ROUTE_MODELS_RELOAD = "/models/reload"
"""POST: re-read the registry aliases now (admin token)."""
ROUTE_METRICS = "/metrics"
"""GET Prometheus metrics."""

IDEMPOTENCY_HEADER = "Idempotency-Key"
"""Header that makes a `/predict` retry safe (the body field `idempotency_key` does the same)."""


class PredictRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One prediction for one user; `label` may come inline when it is already known (needs the label token)."""

    user_id: UserId
    features: Annotated[dict[FeatureName, FeatureValue], msgspec.Meta(max_length=MAX_FEATURES)]
    label: Label | None = None
    idempotency_key: IdempotencyKey | None = None
    """A retry with the same key returns the first answer and is counted once (or use the header)."""


class PredictResponse(msgspec.Struct, kw_only=True):
    """The prediction, and which model version and arm served it."""

    request_id: str
    prediction: Label
    model_name: str
    model_version: str
    arm: Arm
    experiment_id: str


class PredictBatchRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Many predictions in one call (at most `DRIFTLOOP_PREDICT_BATCH_ROWS_MAX`): each is assigned, checked, logged
    and answered like a single `/predict` (keys in the body's `idempotency_key`)."""

    requests: Annotated[list[PredictRequest], msgspec.Meta(min_length=1)]


class PredictBatchItem(msgspec.Struct, kw_only=True):
    """The outcome of one row of a batch: its answer (200) or what was wrong with it (its own 4xx/5xx)."""

    status_code: int
    result: PredictResponse | None = None
    error: str | None = None


class PredictBatchResponse(msgspec.Struct, kw_only=True):
    """One item per request of the batch, in order."""

    results: list[PredictBatchItem]


class FeedbackRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A label that arrives after the prediction (a retry with the same label is harmless)."""

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


class ConfusionCell(msgspec.Struct, kw_only=True):
    """How many labelled requests of one arm had this label and this prediction."""

    label: str
    prediction: str
    count: int


class UserSums(msgspec.Struct, kw_only=True):
    """Per-user sums of one arm, enough for a cluster-robust (delta-method) variance of its accuracy.

    Users, not requests, are what the router randomises, and one user's requests are alike: the variance of the
    accuracy ratio sum(x) / sum(n) is computed over users. For each user i with at least one scored request,
    n_i = labelled answered requests + failed requests and x_i = correct answered requests: a failed prediction is
    a certain miss (it needs no label to be wrong), so it counts against its arm in the primary metric.
    """

    users: int
    """Users with at least one scored request (labelled, or failed)."""
    sum_n: int
    """Scored requests: labelled answered ones plus failed ones."""
    sum_x: int
    """Correct predictions (of the labelled answered requests)."""
    sum_nn: int
    """Sum over users of n_i squared."""
    sum_xx: int
    """Sum over users of x_i squared."""
    sum_nx: int
    """Sum over users of n_i x_i."""


class ArmOutcome(msgspec.Struct, kw_only=True):
    """What one arm of the current experiment served and how it did."""

    arm: Arm
    model_version: str
    requests: int
    """Requests assigned to this arm and answered."""
    labelled: int
    correct: int
    incorrect: int
    errors: int = 0
    """Requests assigned to this arm whose prediction failed (answered with a 5xx, recorded all the same)."""
    users: int = 0
    """Distinct users assigned to this arm (users, not requests, are the unit of randomisation)."""
    labelled_users: int = 0
    """Distinct users of this arm with at least one labelled request."""
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    """Latency percentiles of the answered requests (None with no request)."""
    confusion: list[ConfusionCell] = []
    """Counts of (label, prediction) over the labelled requests."""
    user_sums: UserSums | None = None
    """Per-user sums for the cluster-robust variance (None from a router that does not report them)."""
    first_request_at: datetime | None = None
    """When this arm answered or failed its first request of the experiment (request and label rates)."""
    last_request_at: datetime | None = None


class ExperimentPlan(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The plan of one A/B experiment, made when its challenger is registered (also kept as version tags)."""

    champion_version: Version
    challenger_version: Version
    metric: Literal["accuracy"] = "accuracy"
    alpha: Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)]
    power: Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)]
    mde: Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)]
    """Minimum detectable effect: absolute lift of the metric the experiment is powered for."""
    baseline: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
    """The champion's expected metric (accuracy) at the start."""
    min_samples_per_arm: Annotated[int, msgspec.Meta(ge=1)]
    """Labelled outcomes per arm at which the sequential test reaches `power` for a lift of `mde`."""
    fixed_horizon_samples_per_arm: Annotated[int, msgspec.Meta(ge=1)]
    """The same for a single-look test, for reference (the sequential test needs more)."""
    ab_split_b: Split
    max_duration_hours: Annotated[float, msgspec.Meta(gt=0.0)]
    srm_threshold: Annotated[float, msgspec.Meta(gt=0.0, lt=1.0)] = 0.005
    """Level of the always-valid sample ratio test over all looks (on users, and on labelled users)."""
    guardrail_error_margin: Annotated[float, msgspec.Meta(ge=0.0)] = 0.005
    """Absolute part of the non-inferiority margin of the challenger's error rate (see the relative part)."""
    guardrail_latency_margin: Annotated[float, msgspec.Meta(ge=0.0)] = 0.5
    """Non-inferiority margin of the challenger's p95 latency (relative to the champion's)."""
    guardrail_latency_slack_ms: Annotated[float, msgspec.Meta(ge=0.0)] = 20.0
    """Absolute slack of the latency guardrail on top of the relative margin, and its practical floor: unless the
    challenger's model also costs this much more CPU per request than the champion's, no latency difference counts."""
    guardrail_latency_bucket_seconds: Annotated[int, msgspec.Meta(ge=1, le=86_400)] = 60
    """Width of the time buckets in which the latency guardrail compares the arms."""
    guardrail_latency_looks: Annotated[int, msgspec.Meta(ge=1)] = 2
    """Consecutive looks that must see a latency breach before it rolls the challenger back."""
    loop_id: Annotated[str, msgspec.Meta(max_length=64)] = ""
    """Links the drift event, the retrain run, this experiment and its decision."""
    mde_relative: Annotated[float, msgspec.Meta(ge=0.0, lt=1.0)] = 0.0
    """The relative MDE the plan was made from (mde = mde_relative x baseline); 0: `mde` was given as absolute."""
    design_effect: Annotated[float, msgspec.Meta(ge=1.0)] = 1.0
    """Variance inflation by the users' correlation the sample sizes include (1: none applied)."""
    design_effect_source: Annotated[str, msgspec.Meta(max_length=500)] = ""
    """Where the design effect came from (the champion's recent traffic, or why none was applied)."""
    guardrail_error_margin_relative: Annotated[float, msgspec.Meta(ge=0.0)] = 0.25
    """Relative part of the error-rate non-inferiority margin: margin = relative x champion's rate + absolute."""
    feasible: bool = True
    """Whether the planned sample fits in `max_duration_hours` at the request and label rates the router saw."""
    expected_hours: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0
    """Hours the planned sample takes at those rates (0: the rates were not known)."""
    feasibility: Annotated[str, msgspec.Meta(max_length=1000)] = ""
    """The feasibility check in words (rates, hours needed, maximum)."""
    watch_hours: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0
    """After a PROMOTE, the new champion is watched this long against the experiment's estimate (0: no watch)."""


class Experiment(msgspec.Struct, kw_only=True):
    """The router's view of the current experiment."""

    experiment_id: str
    champion_version: str
    challenger_version: str | None
    status: Literal["none", "running", "paused", "ended"]
    """`paused`: the champion serves everyone until the experiment is resumed or ended; the challenger keeps its
    alias."""
    started_at: datetime | None = None
    """When the router first served this champion/challenger pair."""
    plan: ExperimentPlan | None = None
    sample_reached_at: datetime | None = None
    ended_at: datetime | None = None
    end_reason: str | None = None
    paused_at: datetime | None = None
    pause_reason: str | None = None
    resumed_at: datetime | None = None


class ExperimentEnd(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Ends the current experiment at the router (after the registry moved) with the decision that ended it."""

    challenger_version: Version
    decision: Ending
    reason: Annotated[str, msgspec.Meta(max_length=MAX_REASON)]


class ExperimentPause(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Pauses (or resumes) the current experiment of this challenger: while paused, the champion serves everyone, the
    challenger keeps its alias, and the requests served are no part of the comparison."""

    challenger_version: Version
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_REASON)]


class LatencyBucket(msgspec.Struct, kw_only=True):
    """Latency of one arm within one time bucket: the latency guardrail compares the arms bucket by bucket.

    Both arms are served by the same processes at the same time, so a busy machine slows both within a bucket;
    comparing bucket by bucket keeps load that comes and goes out of the comparison.
    """

    start: datetime
    """Start of the bucket (UTC); buckets are `bucket_seconds` wide, aligned to the epoch."""
    arm: Arm
    requests: int
    latency_p95_ms: float
    """p95 of the request latency (arrival to answer) in the bucket."""
    compute_ms_median: float | None = None
    """Median CPU time the model call took per request (what the model itself costs, which load does not inflate)."""


class ShadowOutcome(msgspec.Struct, kw_only=True):
    """Shadow mode: the challenger's predictions for champion requests (logged, never served)."""

    model_version: str
    requests: int
    """Champion requests the challenger also scored."""
    agree: int
    """Of those, how many got the champion's prediction."""
    labelled: int
    correct: int
    """Labelled ones the challenger got right (labels are the champion requests' own)."""


class Outcomes(msgspec.Struct, kw_only=True):
    """Outcome counts per arm for the current experiment (champion version vs challenger version)."""

    model_name: str
    experiment_id: str
    champion_version: str
    challenger_version: str | None
    ab_split_b: float
    arms: list[ArmOutcome]
    started_at: datetime | None = None
    plan: ExperimentPlan | None = None
    paused_at: datetime | None = None
    """Set while the experiment is paused (the champion serves everyone; these counts do not grow)."""
    resumed_at: datetime | None = None
    """When an operator last resumed it (a sample ratio mismatch is then reported, not acted on)."""
    bucket_seconds: int = 60
    latency_buckets: list[LatencyBucket] = []
    """Per arm and time bucket, the latency and compute time of the answered requests, oldest first."""
    shadow: ShadowOutcome | None = None
    """Shadow mode only: the challenger's scores of champion requests, beside the arms' counts."""

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
    compute_ms: float | None = None
    """CPU time of the model call for this request (None for records logged before it was measured)."""


class InferencePage(msgspec.Struct, kw_only=True):
    """A page of the inference log, newest first."""

    records: list[InferenceRecord]
    next_cursor: str | None = None
    """Pass as `before` to read the next (older) page; None when this page was the last (it was not full)."""


def page_cursor(record: InferenceRecord) -> str:
    """The cursor of the records older than `record` (log order: newest `ts` first, then `request_id` descending)."""
    return f"{record.ts.isoformat()}|{record.request_id}"


def parse_cursor(cursor: str) -> tuple[datetime, str]:
    """The (ts, request_id) a cursor from `page_cursor` stands for.

    Raises:
        ValueError: It is not such a cursor.
    """
    ts, sep, request_id = cursor.partition("|")
    if not sep or not request_id:
        raise ValueError(f"bad cursor {cursor[:80]!r}: pass the `next_cursor` of the previous page unchanged")
    try:
        return datetime.fromisoformat(ts), request_id
    except ValueError:
        raise ValueError(f"bad cursor {cursor[:80]!r}: pass the `next_cursor` of the previous page unchanged") from None


class Health(msgspec.Struct, kw_only=True):
    """Liveness plus which versions the router is serving (cheap: no store or registry call)."""

    status: Literal["ok", "degraded", "no_model"]
    """`degraded`: serving, but something is wrong (a challenger that does not load, an unreachable registry)."""
    model_name: str
    champion_version: str | None
    challenger_version: str | None
    reasons: list[str] = []
    """Why the status is not `ok`, one line each."""
    execution: dict[str, str] = {}
    """Per alias served: `lean (...)` when a verified faster path runs the model, else `model predict (why)`."""


class ReadyCheck(msgspec.Struct, kw_only=True):
    """One readiness check."""

    name: Literal["store", "models", "refresh"]
    ok: bool
    detail: str


class Readiness(msgspec.Struct, kw_only=True):
    """Whether this replica should get traffic: the store takes a write, a champion serves, the aliases are fresh."""

    ready: bool
    checks: list[ReadyCheck]


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every client error: a status code and what was wrong."""

    status_code: int
    detail: str
    extra: dict[str, object] | list[object] | None = None
