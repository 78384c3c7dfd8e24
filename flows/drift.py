"""Drift flow: compare the router's recent traffic with the champion's reference and emit a drift event.

The router is asked first: a check with too little traffic, or with nothing new since the last check, skips before
MLflow or Evidently is even imported, so a scheduled run with nothing to do costs a process start and one HTTP call.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.variables import Variable

from contracts import events
from contracts.registry import CHAMPION, KIND_DRIFT, TAG_KIND
from flows.settings import get_settings
from flows.tasks import (
    IO_RETRIES,
    connect_mlflow,
    emit,
    fetch_traffic,
    find_version,
    frame_from_traffic,
    load_reference,
    mlflow_run_url,
    new_id,
    report_startup,
    run_name,
)


def _checkpoint(model_name: str) -> str:
    # Prefect variable names take lowercase letters, digits, dashes and underscores only.
    return "driftloop-drift-checked-" + re.sub(r"[^a-z0-9_-]", "_", model_name.lower())


@task(**IO_RETRIES)
def last_checked(model_name: str) -> datetime | None:
    """Time of the newest request the last completed check saw (a Prefect variable, visible in the UI)."""
    value = Variable.get(_checkpoint(model_name))
    return datetime.fromisoformat(value) if value else None


@task(**IO_RETRIES)
def mark_checked(model_name: str, newest: datetime) -> None:
    """Remember the newest request this check saw, so the next check skips when nothing new arrived."""
    Variable.set(_checkpoint(model_name), newest.isoformat(), overwrite=True)


@task
def compute_drift(reference, current, method: str | None, threshold: float | None):
    """Run Evidently's data drift preset on the window against the reference."""
    from flows.lib import drift as drift_lib

    return drift_lib.compute_drift(reference, current, method=method, threshold=threshold)


@task(**IO_RETRIES)
def save_report(result, *, model_name: str, version: str, reports_dir: Path, tracking_uri: str) -> tuple[str, str]:
    """Write the HTML report locally and into an MLflow run, so the MLflow UI can show it."""
    import mlflow

    from flows.lib import drift as drift_lib

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    path = drift_lib.save_report(result, reports_dir / f"{model_name}-v{version}-{stamp}.html")
    with mlflow.start_run(run_name=f"drift {model_name} v{version} {stamp}", tags={TAG_KIND: KIND_DRIFT}) as run:
        mlflow.log_metrics({"drift_share": result.drift_share, "drifted_columns": len(result.drifted_columns)})
        mlflow.log_params({"model_name": model_name, "champion_version": version})
        mlflow.log_artifact(str(path), artifact_path="drift_report")
    return str(path.resolve()), mlflow_run_url(tracking_uri, run.info.experiment_id, run.info.run_id)


@flow(name="drift", flow_run_name=run_name("drift"), log_prints=True)
def drift(
    model_name: str | None = None,
    window_rows: int | None = None,
    window_minutes: float | None = None,
    share_threshold: float | None = None,
) -> dict:
    """Check the recent production window for data drift against the champion's reference.

    Args:
        model_name: Registered model (default from settings).
        window_rows: At most this many newest logged requests form the window.
        window_minutes: Only requests newer than this count.
        share_threshold: Drift is detected when at least this share of columns drifted.

    Returns:
        The event payload, or a skip reason.
    """
    report_startup("drift")
    settings = get_settings()
    model_name = model_name or settings.model_name
    window_rows = window_rows or settings.drift_window_rows
    window_minutes = window_minutes or settings.drift_window_minutes
    share_threshold = settings.drift_share_threshold if share_threshold is None else share_threshold

    records = fetch_traffic(settings, limit=window_rows, minutes=window_minutes, labelled=None)
    if len(records) < settings.drift_min_rows:
        print(f"skipped: only {len(records)} requests in the window (need {settings.drift_min_rows})")
        return {"skipped": f"{len(records)} rows in window"}
    newest = max(r.ts for r in records)
    previous = last_checked(model_name)
    if previous is not None and newest <= previous:
        print(f"skipped: no request since the last check (newest {newest.isoformat()})")
        return {"skipped": "no new traffic"}

    connect_mlflow(settings)
    champion = find_version(model_name, CHAMPION)
    if champion is None:
        print(f"skipped: no {CHAMPION} for {model_name} yet, nothing to compare")
        return {"skipped": "no champion"}
    reference = load_reference(model_name, CHAMPION)
    current = frame_from_traffic(records, reference, settings.target, labelled=False)
    features = list(current.columns)
    result = compute_drift(reference[features], current, settings.drift_method, settings.drift_column_threshold)
    path, url = save_report(
        result,
        model_name=model_name,
        version=champion["version"],
        reports_dir=settings.home / "reports",
        tracking_uri=settings.mlflow_tracking_uri,
    )
    detected = result.drift_share >= share_threshold
    payload = events.DriftPayload(
        model_name=model_name,
        champion_version=champion["version"],
        drift_share=result.drift_share,
        drifted_columns=result.drifted_columns,
        n_columns=result.n_columns,
        window_start=min(r.ts for r in records).isoformat(),
        window_end=max(r.ts for r in records).isoformat(),
        window_rows=len(records),
        report=path,
        report_url=url,
        # A detected drift starts a new turn of the loop; retrain, experiment and decision carry its id.
        loop_id=new_id() if detected else "",
    ).model_dump(mode="json")

    rows = "\n".join(
        f"| {c.column} | {c.method} | {c.score:.4g} | {c.threshold:.4g} | {'**drift**' if c.drifted else 'ok'} |"
        for c in result.columns
    )
    create_markdown_artifact(
        key="drift-summary",
        markdown=(
            f"# Drift check: {model_name} v{champion['version']}\n\n"
            f"**{'Drift detected' if detected else 'No drift'}**: {len(result.drifted_columns)} of "
            f"{result.n_columns} columns drifted (share {result.drift_share:.2f}, threshold {share_threshold}) "
            f"over {len(records)} requests.\n\n"
            "| column | method | score | threshold | verdict |\n|---|---|---|---|---|\n"
            f"{rows}\n\n[Evidently report]({url})"
        ),
    )
    create_link_artifact(key="drift-report", link=url, link_text="Evidently drift report (MLflow)")
    emit(
        events.DRIFT_DETECTED if detected else events.DRIFT_CHECKED,
        model_name,
        payload,
        version=champion["version"],
    )
    mark_checked(model_name, newest)
    print(
        f"{'DRIFT DETECTED' if detected else 'no drift'}: share {result.drift_share:.2f} "
        f"({', '.join(result.drifted_columns) or 'no column'}) over {len(records)} requests; report {path}"
    )
    return payload | {"detected": detected}
