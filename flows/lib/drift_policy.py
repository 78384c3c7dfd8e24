"""Drift policy: persistence of alarms across checks, severity from configurable rules, and when to retrain.

One unlucky window must not start a retrain: a finding (a column's drift test, a data-quality finding, prediction or
label drift, a performance drop) counts only after `consecutive` checks in a row raised it. The streaks are kept per
finding in a small JSON state (the drift flow stores it in a Prefect variable) and start again when the champion
changes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from contracts import events

PREDICTION_KEY = "prediction:"
"""Finding key of prediction drift (the served model's outputs)."""
LABEL_KEY = "label:"
"""Finding key of label drift."""
PERFORMANCE_KEY = "performance:accuracy"
"""Finding key of a performance drop."""
QUALITY_PREFIX = "quality:"
"""Finding keys of data quality are `quality:<column>`; feature drift keys are the column names."""


@dataclass
class EpisodeState:
    """Consecutive alarms per finding, for one champion version."""

    champion_version: str = ""
    streaks: dict[str, int] = field(default_factory=dict)
    checks: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | None) -> EpisodeState:
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
            return cls(
                champion_version=str(data.get("champion_version", "")),
                streaks={str(k): int(v) for k, v in dict(data.get("streaks", {})).items()},
                checks=int(data.get("checks", 0)),
            )
        except (ValueError, TypeError, AttributeError):
            return cls()  # an unreadable state starts afresh: persistence only delays, it never hides a finding


def update(state: EpisodeState, alarms: set[str], champion_version: str) -> EpisodeState:
    """The state after one check that raised `alarms` (finding keys); streaks of the others end."""
    previous = state.streaks if state.champion_version == champion_version else {}
    streaks = {key: previous.get(key, 0) + 1 for key in alarms}
    checks = (state.checks if state.champion_version == champion_version else 0) + 1
    return EpisodeState(champion_version=champion_version, streaks=streaks, checks=checks)


def persistent(state: EpisodeState, consecutive: int) -> set[str]:
    """Findings raised in at least `consecutive` checks in a row."""
    return {key for key, streak in state.streaks.items() if streak >= consecutive}


@dataclass
class SeverityRules:
    """How persistent findings map to a severity."""

    critical_share: float = 0.3
    """Critical when at least this share of the feature columns drifted (drift or data quality)."""
    important_columns: list[str] = field(default_factory=list)
    """Critical when one of these drifted."""
    warning_columns: int = 1
    """Warning from this many drifted columns on."""
    performance_is_critical: bool = True
    """A performance drop alone is critical (else a warning)."""
    prediction_is_critical: bool = False
    """Prediction or label drift alone is critical (else a warning)."""


@dataclass
class Verdict:
    """The outcome of one check after persistence and the severity rules."""

    severity: str
    reason: str
    reasons: list[str]
    drifted_columns: list[str]
    """Feature columns with a persistent finding (drift test or data quality), in column order."""
    performance_drop: bool
    prediction_drift: bool
    label_drift: bool


def verdict(found: set[str], columns: list[str], rules: SeverityRules) -> Verdict:
    """Severity and reasons from the persistent findings.

    Args:
        found: Persistent finding keys (`persistent`).
        columns: The feature columns the check covers, in order.
        rules: The severity rules.
    """
    drift = [c for c in columns if c in found]
    quality = [c for c in columns if f"{QUALITY_PREFIX}{c}" in found]
    drifted = [c for c in columns if c in drift or c in quality]
    performance = PERFORMANCE_KEY in found
    prediction = PREDICTION_KEY in found
    label = LABEL_KEY in found
    reasons = []
    if performance:
        reasons.append("performance drop on labelled traffic")
    if drift:
        reasons.append(f"feature drift: {', '.join(drift)}")
    if quality:
        reasons.append(f"data quality: {', '.join(quality)}")
    if prediction:
        reasons.append("prediction drift")
    if label:
        reasons.append("label drift")
    share = len(drifted) / len(columns) if columns else 0.0
    important = [c for c in drifted if c in rules.important_columns]
    critical = (
        (drifted and share >= rules.critical_share)
        or bool(important)
        or (performance and rules.performance_is_critical)
        or ((prediction or label) and rules.prediction_is_critical)
    )
    warning = len(drifted) >= rules.warning_columns or performance or prediction or label
    severity = events.SEVERITY_CRITICAL if critical else events.SEVERITY_WARNING if warning else events.SEVERITY_NONE
    if important:
        reasons.append(f"important columns drifted: {', '.join(important)}")
    if severity == events.SEVERITY_NONE:
        reason = events.REASON_NONE
    elif performance:
        reason = events.REASON_PERFORMANCE_DROP
    elif drift:
        reason = events.REASON_FEATURE_DRIFT
    elif quality:
        reason = events.REASON_DATA_QUALITY
    elif prediction:
        reason = events.REASON_PREDICTION_DRIFT
    else:
        reason = events.REASON_LABEL_DRIFT
    return Verdict(
        severity=severity,
        reason=reason,
        reasons=reasons,
        drifted_columns=drifted,
        performance_drop=performance,
        prediction_drift=prediction,
        label_drift=label,
    )


def starts_retrain(severity: str, retrain_severity: str) -> bool:
    """True when `severity` reaches the configured one (`none` never retrains)."""
    order = events.SEVERITIES
    if retrain_severity not in order or severity not in order:
        raise ValueError(f"Unknown severity: {severity!r} or {retrain_severity!r} (known: {order}).")
    return severity != events.SEVERITY_NONE and order.index(severity) >= order.index(retrain_severity)


def stale_drift(measured_against: str, champion: str) -> str | None:
    """Why a drift-started run has nothing to do, or None: the drift was measured against an earlier champion.

    A check that started before a promotion still emits against the old champion's reference; the new champion was
    trained on that very traffic, and the next check measures against its own reference.
    """
    if not measured_against or measured_against == champion:
        return None
    return (
        f"the drift was measured against v{measured_against}, but v{champion} is champion now: "
        "the next drift check measures against its reference"
    )


def reference_sample(training_data, rows: int, seed: int):
    """A version's reference: a seeded random sample of `rows` of its training rows (all of them when fewer).

    Training rows are labelled traffic up to the retrain and the original data, so the windows that follow the
    retrain (newer requests) never overlap it; being random rather than the newest rows, it is not selected by label
    arrival, and its size (hence the calibration's null) stays the same from version to version.
    """
    if len(training_data) <= rows:
        return training_data.reset_index(drop=True)
    return training_data.sample(rows, random_state=seed).reset_index(drop=True)
