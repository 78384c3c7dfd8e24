"""Store rows as the API's contract shapes: the one place where a stored row becomes what a client reads."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import msgspec

from contracts.api import (
    Arm,
    ArmOutcome,
    Experiment,
    ExperimentPlan,
    FeedbackResponse,
    Health,
    InferenceRecord,
    LatencyBucket,
    Outcomes,
    PredictBatchItem,
    PredictResponse,
)
from contracts.registry import CHALLENGER, CHAMPION
from serving.errors import RouterError, redact
from serving.services.models import ModelSet
from serving.services.store import ExperimentRow, InferenceRow, LatencyBucketRow

logger = logging.getLogger(__name__)

ARMS: tuple[Arm, ...] = (CHAMPION, CHALLENGER)


def predict_response(row: InferenceRow, prediction: object | None = None) -> PredictResponse:
    """The answer to a prediction, from its logged row (a retry gets the same answer from the log).

    Args:
        row: The logged prediction.
        prediction: The model's native label (an int stays an int); None: the logged string.
    """
    return PredictResponse(
        request_id=row.request_id,
        prediction=row.prediction if prediction is None else prediction,  # type: ignore[arg-type]
        model_name=row.model_name,
        model_version=row.model_version,
        arm=row.arm,
        experiment_id=row.experiment_id,
    )


def batch_item(outcome: PredictResponse | BaseException) -> PredictBatchItem:
    """One row of a `/predict/batch` answer: the response, or the row's own error (internal ones not detailed)."""
    if isinstance(outcome, PredictResponse):
        return PredictBatchItem(status_code=200, result=outcome)
    if isinstance(outcome, RouterError):
        return PredictBatchItem(status_code=outcome.status_code, error=redact(outcome.detail))
    logger.error("a /predict/batch row failed: %s: %s", type(outcome).__name__, outcome, exc_info=outcome)
    return PredictBatchItem(status_code=500, error="internal server error (see the router log)")


def feedback_response(row: InferenceRow) -> FeedbackResponse:
    """The stored outcome of a labelled prediction."""
    assert row.label is not None
    return FeedbackResponse(
        request_id=row.request_id,
        label=row.label,
        prediction=row.prediction,
        correct=row.label == row.prediction,
        arm=row.arm,
        model_version=row.model_version,
    )


def inference_record(row: InferenceRow) -> InferenceRecord:
    """One logged prediction as the inference log returns it."""
    return InferenceRecord(
        request_id=row.request_id,
        ts=row.ts,
        user_id=row.user_id,
        arm=row.arm,
        model_version=row.model_version,
        experiment_id=row.experiment_id,
        features=row.features,
        prediction=row.prediction,
        label=row.label,
        latency_ms=row.latency_ms,
        compute_ms=row.compute_ms,
    )


def plan_of(row: ExperimentRow) -> ExperimentPlan | None:
    """The stored plan as the contract's shape."""
    return None if row.plan is None else msgspec.convert(row.plan, ExperimentPlan)


def experiment(row: ExperimentRow) -> Experiment:
    """A stored experiment: ended once ended, running once served, else none (planned only)."""
    status = "ended" if row.ended_at else "paused" if row.paused_at else "running" if row.started_at else "none"
    return Experiment(
        experiment_id=row.experiment_id,
        champion_version=row.champion_version,
        challenger_version=row.challenger_version,
        status=status,
        started_at=row.started_at,
        plan=plan_of(row),
        sample_reached_at=row.sample_reached_at,
        ended_at=row.ended_at,
        # The contract has one field for both: the decision leads, as in "ROLLBACK: p=0.003, challenger worse".
        end_reason=None if row.ended_at is None else f"{row.end_decision}: {row.end_reason}",
        paused_at=row.paused_at,
        pause_reason=row.pause_reason,
        resumed_at=row.resumed_at,
    )


def outcomes(
    current: ModelSet,
    exp: Experiment,
    counts: Mapping[str, ArmOutcome],
    split: float,
    buckets: Sequence[LatencyBucketRow] = (),
    bucket_seconds: int = 60,
) -> Outcomes:
    """Per-arm outcome counts of the experiment being served, with latency per time bucket.

    Args:
        current: The set serving (gives the arms and their versions).
        exp: The experiment (id, versions, start, plan).
        counts: Stored outcomes by arm (an arm that served nothing yet gets zeros).
        split: The split in force.
        buckets: Latency and compute time per (bucket, arm), oldest first.
        bucket_seconds: Width of the buckets.
    """
    arms: list[ArmOutcome] = []
    for arm in ARMS:
        served = current.for_arm(arm)
        if served is None:
            continue
        stored = counts.get(arm)
        arms.append(
            stored
            if stored is not None
            else ArmOutcome(arm=arm, model_version=served.version, requests=0, labelled=0, correct=0, incorrect=0)
        )
    return Outcomes(
        model_name=current.model_name,
        experiment_id=exp.experiment_id,
        champion_version=exp.champion_version,
        challenger_version=exp.challenger_version,
        ab_split_b=split,
        arms=arms,
        started_at=exp.started_at,
        plan=exp.plan,
        paused_at=exp.paused_at,
        resumed_at=exp.resumed_at,
        bucket_seconds=bucket_seconds,
        latency_buckets=[
            LatencyBucket(
                start=b.start,
                arm=b.arm,
                requests=b.requests,
                latency_p95_ms=b.latency_p95_ms,
                compute_ms_median=b.compute_ms_median,
            )
            for b in buckets
        ],
    )


def health(current: ModelSet) -> Health:
    """Liveness: `ok`, `degraded` (serving, with the reasons) or `no_model`."""
    status = "no_model" if current.champion is None else "degraded" if current.problems else "ok"
    return Health(
        status=status,
        model_name=current.model_name,
        champion_version=current.champion_version,
        challenger_version=current.challenger_version,
        reasons=list(current.problems),
        execution={
            alias: served.execution
            for alias, served in ((CHAMPION, current.champion), (CHALLENGER, current.challenger))
            if served is not None
        },
    )
