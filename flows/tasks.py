"""Prefect tasks shared by several flows: small verbs around the plain functions in `flows.lib`.

Only what orchestration needs is imported at module level: every flow run is a fresh process on the work pool, and
MLflow, pandas, scipy or PyCaret each cost seconds of CPU to import. Tasks import them where they are used, so a run
that skips pays for none of them.
"""

from __future__ import annotations

import time
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


def router(settings: FlowSettings) -> RouterClient:
    """A client of the router with the flows' settings and tokens."""
    return RouterClient(settings.router_url, tokens=settings, timeout=settings.http_timeout_seconds)


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


@task(**IO_RETRIES)
def fetch_traffic(
    settings: FlowSettings, *, limit: int, minutes: float | None, labelled: bool | None
) -> list[InferenceRecord]:
    """The newest logged requests from the router's inference log."""
    since = datetime.now(UTC) - timedelta(minutes=minutes) if minutes else None
    with router(settings) as client:
        return client.inferences(limit=limit, since=since, labelled=labelled)


@task
def train_candidate(training_data: pd.DataFrame, settings: FlowSettings, *, latency_budget_ms: float | None = None):
    """Run PyCaret's setup and compare_models, pick the best candidate within the latency budget, finalize it."""
    from flows.lib import training  # PyCaret takes seconds to import: only flows that train pay for it.

    return training.train(
        training_data,
        settings.target,
        models=settings.retrain_models,
        folds=settings.retrain_folds,
        session_id=settings.session_id,
        candidates=settings.retrain_candidates,
        latency_budget_ms=latency_budget_ms,
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
) -> dict[str, str]:
    """Log the candidate, its metrics and its reference data to MLflow, and register a new version."""
    from flows.lib import registry

    metrics = {f"cv_{k}": v for k, v in result.cv_metrics.items()}
    metrics |= {f"holdout_{k}": v for k, v in result.holdout_metrics.items()}
    metrics |= {f"serving_{k}": v for k, v in result.serving_cost.as_metrics().items()}
    metrics |= extra_metrics or {}
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
        },
        metrics=metrics,
        tags=tags,
        run_name=run_name,
        tables={"candidates.json": result.candidate_table()},
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
