"""Prefect tasks shared by several flows: small verbs around the plain functions in `flows.lib`.

Only what orchestration needs is imported at module level: every flow run is a fresh process on the work pool, and
MLflow, pandas, scipy or PyCaret each cost seconds of CPU to import. Tasks import them where they are used, so a run
that skips pays for none of them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.events import emit_event

from contracts import events
from flows.lib.router import RouterClient
from flows.settings import FlowSettings, get_settings

if TYPE_CHECKING:
    import pandas as pd

    from contracts.api import InferenceRecord


def run_name(stage: str):
    """A flow run name that says which model the run is about, also when the parameter was left to settings."""

    def name() -> str:
        from prefect.runtime import flow_run

        return f"{stage}: {flow_run.parameters.get('model_name') or get_settings().model_name}"

    return name


def startup_cpu_seconds() -> float:
    """CPU seconds this process has used since it started (process start, imports, flow load, API calls)."""
    return time.process_time()


def report_startup(stage: str) -> float:
    """Print what the run cost before its first task, so the figure is in every run's log."""
    cpu = startup_cpu_seconds()
    print(f"{stage}: {cpu:.2f} s of CPU from process start to the first task")
    return cpu


IO_RETRIES = {"retries": 3, "retry_delay_seconds": [2, 5, 10]}
"""The one retry policy of tasks that talk to MLflow, the router or Prefect: `@task(**IO_RETRIES)`."""


def new_id() -> str:
    """A short random id for a decision or a turn of the loop (12 hex digits)."""
    return uuid.uuid4().hex[:12]


def run_lineage() -> dict[str, str]:
    """Tags that tie an MLflow run to the Prefect flow run making it (id and UI link; empty outside a flow run)."""
    from prefect.runtime import flow_run
    from prefect.utilities.urls import url_for

    from contracts.registry import TAG_FLOW_RUN_ID, TAG_FLOW_RUN_URL

    if not flow_run.id:
        return {TAG_FLOW_RUN_ID: "", TAG_FLOW_RUN_URL: ""}
    return {TAG_FLOW_RUN_ID: flow_run.id, TAG_FLOW_RUN_URL: url_for("flow-run", obj_id=flow_run.id) or ""}


def router(settings: FlowSettings) -> RouterClient:
    """A client of the router with the flows' settings and tokens."""
    return RouterClient(settings.router_url, tokens=settings, timeout=settings.http_timeout_seconds)


def retrain_slot_name(model_name: str) -> str:
    """The Prefect global concurrency limit that lets one retrain of a model run at a time, whatever started it."""
    return f"driftloop-retrain:{model_name}"


def ensure_limit(name: str) -> None:
    """Create the Prefect global concurrency limit `name` with one slot unless it exists (idempotent, race-safe)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.upsert_global_concurrency_limit_by_name(name, 1)
        except ObjectAlreadyExists:  # created by a run that started at the same moment
            pass


@contextmanager
def retrain_slot(model_name: str, *, wait_seconds: float) -> Iterator[bool]:
    """Hold the model's retrain slot for the block: True when held, False when another retrain holds it.

    Each deployment's own concurrency limit keeps its runs apart, but the drift-triggered, the scheduled and a manual
    retrain are different deployments: without one slot per model, two of them could train and gate a candidate each
    at the same time and both become challenger. The slot is a Prefect global concurrency limit of 1 held through a
    lease, so a run that dies frees it when its lease runs out.

    Args:
        model_name: The model whose slot to hold.
        wait_seconds: How long acquiring a slot that looked free may take (a busy server answers slowly; a slot that
            another run holds is not waited for).
    """
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    name = retrain_slot_name(model_name)
    ensure_limit(name)
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(name)
    with ExitStack() as stack:
        # A held slot means a retrain is training now: skip at once rather than wait minutes for it.
        held = limit.active_slots < limit.limit
        if held:
            try:
                stack.enter_context(concurrency(name, occupy=1, timeout_seconds=wait_seconds, strict=True))
            except TimeoutError:  # another run took it between the read and the acquisition
                held = False
        yield held


def ensure_registry_lock(model_name: str) -> None:
    """Create the registry lock of `model_name` unless it exists (the stack does it at start; the lock, lazily)."""
    from contracts.registry import registry_lock_name

    ensure_limit(registry_lock_name(model_name))


@contextmanager
def registry_lock(model_name: str, *, wait_seconds: float) -> Iterator[None]:
    """Hold the model's registry lock for the block: no other run moves an alias of the model meanwhile.

    Bootstrap, retrain, A/B evaluation and every manual control take it around their moves (and re-read both aliases
    inside it before moving), so two runs on any workers never move aliases at once nor act on a stale view. It is a
    Prefect global concurrency limit of 1 held through a lease: a run that dies frees it when its lease runs out.

    Args:
        model_name: The model whose aliases the block moves.
        wait_seconds: How long to wait for a run that holds it.

    Raises:
        TimeoutError: The lock was not free within `wait_seconds`.
    """
    from prefect.concurrency.sync import concurrency

    from contracts.registry import registry_lock_name

    name = registry_lock_name(model_name)
    ensure_limit(name)
    started = time.monotonic()
    with concurrency(name, occupy=1, timeout_seconds=wait_seconds, strict=True, lease_duration=120):
        waited = time.monotonic() - started
        if waited > 5:  # a busy API takes a second or two even when the lock is free
            print(f"registry lock of {model_name} taken after {waited:.1f} s (another run held it)")
        yield


@task(**IO_RETRIES)
def current_aliases(model_name: str) -> dict[str, str | None]:
    """Where `champion` and `challenger` point now (read under the registry lock, just before a move)."""
    from flows.lib import registry

    return registry.aliases_now(model_name)


@task(**IO_RETRIES)
def connect_mlflow(settings: FlowSettings) -> None:
    """Point this process at the MLflow tracking server and experiment."""
    from flows.lib import registry

    registry.configure(settings.mlflow_tracking_uri, settings.mlflow_experiment)


@task(**IO_RETRIES)
def find_version(model_name: str, alias: str) -> dict[str, str] | None:
    """The version and run behind an alias, or None when the alias is not set."""
    from flows.lib import registry

    version = registry.get_version(model_name, alias)
    return None if version is None else {"version": str(version.version), "run_id": version.run_id}


@task(**IO_RETRIES)
def load_reference(model_name: str, alias: str) -> pd.DataFrame:
    """The reference data stored with the aliased version."""
    from flows.lib import registry

    return registry.load_reference(model_name, alias)


@contextmanager
def traffic_pages(
    settings: FlowSettings, *, limit: int, minutes: float | None, labelled: bool | None
) -> Iterator[Iterator[list[InferenceRecord]]]:
    """The newest logged requests a page at a time (newest first), for a reader that keeps only what it needs."""
    since = datetime.now(UTC) - timedelta(minutes=minutes) if minutes else None
    with router(settings) as client:
        yield client.pages(limit=limit, since=since, labelled=labelled, page_size=settings.router_page_size)


@task
def train_candidate(training_data: pd.DataFrame, settings: FlowSettings, *, latency_budget_ms: float | None = None):
    """Compare models with PyCaret (adapted to the data size), pick one within the latency budget, tune it, finalize."""
    from flows.lib import training  # PyCaret takes seconds to import: only flows that train pay for it.
    from flows.lib.training_policy import ImbalancePolicy, ScalePolicy, TuningPolicy

    return training.train(
        training_data,
        settings.target,
        models=settings.retrain_models,
        folds=settings.retrain_folds,
        session_id=settings.session_id,
        candidates=settings.retrain_candidates,
        latency_budget_ms=latency_budget_ms,
        scale=ScalePolicy(
            rows=settings.retrain_scale_rows,
            folds=settings.retrain_scale_folds,
            sample_rows=settings.retrain_scale_sample_rows,
            sampled=tuple(settings.retrain_scale_sampled_models),
            dropped=tuple(settings.retrain_scale_dropped_models),
        ),
        tuning=TuningPolicy(iterations=settings.retrain_tune_iterations, seconds=settings.retrain_tune_seconds),
        imbalance=ImbalancePolicy(
            mode=settings.retrain_fix_imbalance,
            ratio=settings.retrain_imbalance_ratio,
            method=settings.retrain_imbalance_method,
        ),
    )


def calibrate_drift(pipeline: Any, reference: pd.DataFrame, holdout_accuracy: float | None, settings: FlowSettings):
    """Calibrate the drift checks of a version on its reference (thresholds per column and window size)."""
    from flows.lib import drift_calibration

    features = reference.drop(columns=[settings.target], errors="ignore")
    return drift_calibration.calibrate_version(
        reference,
        target=settings.target,
        predictions=pipeline.predict(features) if pipeline is not None else [],
        holdout_accuracy=holdout_accuracy,
        min_rows=settings.drift_min_rows,
        window_rows=settings.drift_window_rows,
        budget=settings.drift_budget,
        period_checks=settings.drift_budget_checks,
        consecutive=settings.drift_consecutive,
        resamples=settings.drift_calibration_resamples,
        seed=settings.session_id,
        per_column_method=settings.drift_methods,
    )


@task  # not retried: a retry after a partial success would register a second version
def register_candidate(
    result,
    *,
    training_data: pd.DataFrame,
    reference: pd.DataFrame,
    settings: FlowSettings,
    model_name: str,
    run_name: str,
    extra_metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
    training_rows: pd.DataFrame | None = None,
    frames: dict[str, pd.DataFrame] | None = None,
    documents: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Log the candidate, its metrics, its training rows and its reference data to MLflow; register a new version.

    The training rows are kept with every version (default: `training_data` as original rows), so a later retrain
    can draw history from them and check which rows a version saw.
    """
    from contracts.registry import (
        DRIFT_ARTIFACT_DIR,
        DRIFT_CALIBRATION_FILE,
        TAG_DRIFT_CALIBRATION,
        TRAINING_ARTIFACT_DIR,
        TRAINING_FILE,
    )
    from flows.lib import registry, window

    metrics = {f"cv_{k}": v for k, v in result.cv_metrics.items()}
    metrics |= {f"holdout_{k}": v for k, v in result.holdout_metrics.items()}
    metrics |= {f"serving_{k}": v for k, v in result.serving_cost.as_metrics().items()}
    metrics |= {"trained_rows": result.trained_rows}
    if result.imbalance is not None:
        metrics |= {"class_imbalance_ratio": result.imbalance.ratio}
    if result.tuning is not None:
        metrics |= {"tune_iterations": result.tuning.iterations, "tune_untuned_cv_f1": result.tuning.untuned_cv_f1}
        if result.tuning.tuned_cv_f1 is not None:
            metrics |= {"tune_tuned_cv_f1": result.tuning.tuned_cv_f1, "tune_seconds": result.tuning.seconds}
    metrics |= extra_metrics or {}
    rows = window.original_rows(training_data) if training_rows is None else training_rows
    frames = {f"{TRAINING_ARTIFACT_DIR}/{TRAINING_FILE}": rows} | (frames or {})
    documents = dict(documents or {})
    documents["training/plan.json"] = {
        "scale": result.scale.as_dict() if result.scale else None,
        "tuning": result.tuning.as_dict() if result.tuning else None,
        "imbalance": result.imbalance.as_dict() if result.imbalance else None,
        "timings_s": result.timings,
    }
    calibrated = calibrate_drift(result.pipeline, reference, result.holdout_metrics.get("accuracy"), settings)
    documents[f"{DRIFT_ARTIFACT_DIR}/{DRIFT_CALIBRATION_FILE}"] = calibrated.as_dict()
    tags = dict(tags or {}) | {TAG_DRIFT_CALIBRATION: calibrated.summary()}
    version = registry.log_candidate(
        pipeline=result.pipeline,
        train_data=training_data,
        reference=reference,
        target=settings.target,
        model_name=model_name,
        params={
            "best_model": result.model_id,
            "models_compared": ",".join(settings.retrain_models),
            "folds": settings.retrain_folds,
            "session_id": settings.session_id,
            "training_rows": len(training_data),
            "reference_rows": len(reference),
            "latency_budget_ms": result.latency_budget_ms,
            "at_scale": result.scale.at_scale if result.scale else False,
            "cv_folds_used": result.scale.folds if result.scale else settings.retrain_folds,
            "models_sampled": ",".join(result.scale.sampled) if result.scale else "",
            "models_dropped": ",".join(result.scale.dropped) if result.scale else "",
            "sample_rows": result.scale.sample_rows if result.scale else 0,
            "tuned": result.tuned_kept,
            "fix_imbalance": result.imbalance.fixed if result.imbalance else False,
        },
        metrics=metrics,
        tags=tags,
        run_name=run_name,
        tables={"candidates.json": result.candidate_table(), "leaderboard.json": result.leaderboard_table()},
        frames=frames,
        documents=documents,
    )
    return {"version": str(version.version), "run_id": version.run_id}


@task(**IO_RETRIES)
def set_alias(model_name: str, alias: str, version: str, *, reason: str, loop_id: str = "") -> None:
    """Point a registry alias at a version and record the move in the alias history."""
    from flows.lib import registry

    registry.move_alias(model_name, alias, version, reason=reason, loop_id=loop_id)


@task(**IO_RETRIES)
def tag_version(model_name: str, version: str, tags: dict[str, str]) -> None:
    """Record a decision or a fact on a model version."""
    from flows.lib import registry

    registry.tag_version(model_name, version, tags)


@task
def emit(
    name: str,
    model_name: str,
    payload: dict[str, Any],
    *,
    version: str | None = None,
    run_id: str | None = None,
) -> None:
    """Emit one of the loop's Prefect events about the model (and its version and MLflow run)."""
    related = []
    if version is not None:
        related.append(events.model_version_resource(model_name, version))
    if run_id is not None:
        related.append({"prefect.resource.id": f"mlflow.run.{run_id}", "prefect.resource.role": "mlflow-run"})
    if payload.get("loop_id"):
        # Every event of one turn of the loop carries it: `python -m flows.lineage <loop_id>` finds them all.
        related.append(events.loop_resource(payload["loop_id"]))
    emit_event(event=name, resource=events.model_resource(model_name), related=related, payload=payload)


def frame_from_traffic(records: list, reference: pd.DataFrame, target: str, *, labelled: bool) -> pd.DataFrame:
    """Turn logged requests into a frame with the reference's feature columns (and target when labelled)."""
    from flows.lib import data

    features = [c for c in reference.columns if c != target]
    frame = data.records_to_frame(records, features, target if labelled else None)
    if labelled and len(frame):
        frame[target] = data.align_target(frame[target], like=reference[target])
    return frame


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A link to a run in the MLflow UI (or its id when the store has no UI)."""
    if tracking_uri.startswith("http"):
        return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"mlflow run {run_id}"
