"""The Prefect events of the loop: names, the resource they are about, and their payloads."""

from __future__ import annotations

from pydantic import BaseModel

DRIFT_CHECKED = "driftloop.drift.checked"
DRIFT_DETECTED = "driftloop.drift.detected"
MODEL_REGISTERED = "driftloop.model.registered"
MODEL_PROMOTED = "driftloop.model.promoted"
MODEL_ROLLED_BACK = "driftloop.model.rolled_back"
EXPERIMENT_DECIDED = "driftloop.experiment.decided"
EXPERIMENT_INVALID = "driftloop.experiment.invalid"
EXPERIMENT_SAMPLE_REACHED = "driftloop.experiment.sample_reached"
EXPERIMENT_GUARDRAIL_BREACHED = "driftloop.experiment.guardrail_breached"
EXPERIMENT_INFEASIBLE = "driftloop.experiment.infeasible"
"""A plan whose sample does not fit in the maximum duration at the traffic the router sees (reported at once)."""
EXPERIMENT_PAUSED = "driftloop.experiment.paused"
"""The A/B flow paused an INVALID experiment at the router (the champion serves everyone)."""
MODEL_WATCH_REGRESSED = "driftloop.model.watch_regressed"
"""The post-promotion watch proved the new champion below its promise and moved `champion` back."""
ROUTER_TRAFFIC = "driftloop.router.traffic"
"""The router served requests in the last period (a heartbeat: its absence is the traffic silence alert)."""
DATA_INVALID = "driftloop.data.invalid"
"""A drift check's window failed the schema (absent columns, wrong types): no drift verdict was given on it."""
MODEL_REJECTED = "driftloop.model.rejected"
"""A retrained candidate failed the quality gate (emitted beside `driftloop.model.registered`)."""

CONTROL_PREFIX = "driftloop.control."
"""Manual operations by a person: `driftloop.control.<action>` (see `ControlPayload`)."""
CONTROL_ROLLBACK = f"{CONTROL_PREFIX}rollback"
CONTROL_PROMOTE = f"{CONTROL_PREFIX}promote"
CONTROL_RETRAIN = f"{CONTROL_PREFIX}retrain"
CONTROL_PAUSE = f"{CONTROL_PREFIX}pause"
CONTROL_RESUME = f"{CONTROL_PREFIX}resume"
CONTROL_END = f"{CONTROL_PREFIX}end"

RESOURCE_PREFIX = "driftloop.model."
LOOP_PREFIX = "driftloop.loop."


def model_resource(model_name: str) -> dict[str, str]:
    """The stable Prefect resource every event about a registered model is attached to."""
    return {"prefect.resource.id": f"{RESOURCE_PREFIX}{model_name}", "prefect.resource.name": model_name}


def model_version_resource(model_name: str, version: str) -> dict[str, str]:
    """A related resource naming one model version."""
    return {
        "prefect.resource.id": f"{RESOURCE_PREFIX}{model_name}.version.{version}",
        "prefect.resource.role": "model-version",
        "prefect.resource.name": f"{model_name} v{version}",
    }


def loop_resource(loop_id: str) -> dict[str, str]:
    """A related resource naming one turn of the loop: every event of the turn carries it, so one filter finds them."""
    return {"prefect.resource.id": f"{LOOP_PREFIX}{loop_id}", "prefect.resource.role": "loop"}


SEVERITY_NONE = "none"
SEVERITY_WARNING = "warning"
SEVERITY_CRITICAL = "critical"
SEVERITIES = (SEVERITY_NONE, SEVERITY_WARNING, SEVERITY_CRITICAL)
"""Severity of a drift check, in increasing order; `DRIFTLOOP_DRIFT_RETRAIN_SEVERITY` names the one that retrains."""

REASON_NONE = "none"
REASON_FEATURE_DRIFT = "feature_drift"
REASON_DATA_QUALITY = "data_quality"
REASON_PREDICTION_DRIFT = "prediction_drift"
REASON_LABEL_DRIFT = "label_drift"
REASON_PERFORMANCE_DROP = "performance_drop"
DRIFT_REASONS = (
    REASON_NONE,
    REASON_PERFORMANCE_DROP,
    REASON_FEATURE_DRIFT,
    REASON_DATA_QUALITY,
    REASON_PREDICTION_DRIFT,
    REASON_LABEL_DRIFT,
)
"""Why a check is severe (`DriftPayload.reason`: the first that applies, in this order)."""


class DriftPayload(BaseModel):
    """Payload of `driftloop.drift.checked` and `driftloop.drift.detected` (every key always present).

    `drift.checked` is emitted by every check that reached a verdict, `drift.detected` in addition when its severity
    reaches the configured retrain severity (the retrain automation listens to it).
    """

    model_name: str
    champion_version: str
    drift_share: float
    drifted_columns: list[str]
    n_columns: int
    window_start: str
    window_end: str
    window_rows: int
    report: str
    """Where the HTML report is: a local path and, when tracked, the MLflow run that holds it."""
    report_url: str
    loop_id: str
    """Identifies this turn of the loop: drift, retrain, experiment and decision carry it."""
    severity: str = SEVERITY_NONE
    """`none`, `warning` or `critical` (`SEVERITIES`), from the configured rules on the persistent findings."""
    reason: str = REASON_NONE
    """The main reason of the severity (`DRIFT_REASONS`); `reasons` lists every finding in words."""
    reasons: list[str] = []
    alarmed_columns: list[str] = []
    """Columns whose test alarmed in this check (before persistence)."""
    quality_columns: list[str] = []
    """Columns with a data-quality finding in this check (missing values, out of range, unseen categories)."""
    consecutive: int = 1
    """Alarms in a row a column needs before it counts as drifted (`drifted_columns`)."""
    prediction_drift: bool = False
    label_drift: bool = False
    labelled_rows: int = 0
    accuracy: float | None = None
    """Accuracy of the champion on the window's labelled requests (None without labels), with its interval."""
    accuracy_low: float | None = None
    accuracy_high: float | None = None
    holdout_accuracy: float | None = None
    """The champion's accuracy on its own holdout when it was registered (None when unknown)."""
    performance_drop: bool = False
    window_sample_rows: int = 0
    """Rows of the window the tests ran on (a seeded sample of a large window; all rows otherwise)."""
    window_sample_seed: int = 0


class DataInvalidPayload(BaseModel):
    """Payload of `driftloop.data.invalid`: the window failed the schema, so no drift verdict was given."""

    model_name: str
    champion_version: str
    errors: list[str]
    absent_columns: list[str]
    wrong_type_columns: list[str]
    extra_columns: list[str]
    window_start: str
    window_end: str
    window_rows: int
    report_url: str


class SampleReachedPayload(BaseModel):
    """Payload of `driftloop.experiment.sample_reached`, emitted once by the router per experiment."""

    model_name: str
    experiment_id: str
    champion_version: str
    challenger_version: str
    min_samples_per_arm: int
    champion_labelled: int
    challenger_labelled: int


class GuardrailBreachedPayload(BaseModel):
    """Payload of `driftloop.experiment.guardrail_breached`, emitted once by the router per experiment."""

    model_name: str
    experiment_id: str
    champion_version: str
    challenger_version: str
    guardrail: str
    detail: str
    champion_requests: int
    champion_errors: int
    challenger_requests: int
    challenger_errors: int


class RegisteredPayload(BaseModel):
    """Payload of `driftloop.model.registered`."""

    model_name: str
    version: str
    run_id: str
    gate_passed: bool
    metrics: dict[str, float]
    loop_id: str = ""
    """The turn of the loop the version belongs to (empty for the bootstrap)."""


class RejectedPayload(BaseModel):
    """Payload of `driftloop.model.rejected`: a registered candidate that failed the quality gate, and why."""

    model_name: str
    version: str
    run_id: str
    reason: str
    loop_id: str


class DecisionPayload(BaseModel):
    """Payload of `driftloop.experiment.decided`, `.invalid`, `driftloop.model.promoted` and `.rolled_back`."""

    model_name: str
    decision_id: str
    loop_id: str
    experiment_id: str
    decision: str
    champion_version: str
    challenger_version: str
    p_value: float | None
    reason: str
    champion_labelled: int
    champion_correct: int
    challenger_labelled: int
    challenger_correct: int
    report_url: str


class InfeasiblePayload(BaseModel):
    """Payload of `driftloop.experiment.infeasible`."""

    model_name: str
    champion_version: str
    challenger_version: str
    min_samples_per_arm: int
    expected_hours: float
    max_duration_hours: float
    feasibility: str
    loop_id: str


class WatchPayload(BaseModel):
    """Payload of `driftloop.model.watch_regressed`: the watch's numbers and the move back."""

    model_name: str
    version: str
    """The champion proven below its promise (rolled back)."""
    previous_version: str
    """The champion restored."""
    accuracy: float | None
    cs_upper: float | None
    threshold: float
    expected_accuracy: float
    scored: int
    elapsed_hours: float
    reason: str
    decision_id: str
    loop_id: str


class ControlPayload(BaseModel):
    """Payload of `driftloop.control.*`: what a person asked for, who, why, and what it changed."""

    model_name: str
    action: str
    """`rollback`, `promote`, `retrain`, `pause`, `resume` or `end`."""
    requested_by: str
    reason: str
    version: str
    """The version the action is about (the new champion, the challenger paused, ...); empty when none."""
    previous_version: str
    """The version the alias pointed to before (empty when nothing moved)."""
    decision_id: str
    loop_id: str


class TrafficPayload(BaseModel):
    """Payload of `driftloop.router.traffic`: requests one router process logged over one period."""

    model_name: str
    requests: int
    since: str
    until: str
    replica_id: str
