"""Drift flow: check the router's recent traffic against the champion's reference and emit the verdict as events.

The router is asked first: a check with too little traffic, or with nothing new since the last check, skips before
MLflow or Evidently is even imported, so a scheduled run with nothing to do costs a process start and one HTTP call.
A check then runs data quality first (a schema failure emits `driftloop.data.invalid` and no verdict), the champion's
calibrated per-column tests (Evidently), prediction drift, label drift and accuracy; persistence and the severity rules
(`flows/lib/drift_policy.py`) turn the findings into a severity. Every check emits `driftloop.drift.checked`; one
whose severity reaches `DRIFTLOOP_DRIFT_RETRAIN_SEVERITY` also emits `driftloop.drift.detected`, which retrains.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.variables import Variable

from contracts import events
from contracts.registry import (
    CHAMPION,
    DRIFT_ARTIFACT_DIR,
    DRIFT_CALIBRATION_FILE,
    KIND_DRIFT,
    TAG_KIND,
    TAG_LOOP_ID,
)
from flows.settings import FlowSettings, get_settings
from flows.tasks import (
    IO_RETRIES,
    calibrate_drift,
    connect_mlflow,
    emit,
    find_version,
    load_reference,
    mlflow_run_url,
    new_id,
    report_startup,
    run_lineage,
    run_name,
    traffic_pages,
)


def _variable(prefix: str, model_name: str) -> str:
    # Prefect variable names take lowercase letters, digits, dashes and underscores only.
    return prefix + re.sub(r"[^a-z0-9_-]", "_", model_name.lower())


def _checkpoint(model_name: str) -> str:
    return _variable("driftloop-drift-checked-", model_name)


def _episode(model_name: str) -> str:
    return _variable("driftloop-drift-episode-", model_name)


@task(**IO_RETRIES)
def last_checked(model_name: str) -> datetime | None:
    """Time of the newest request the last completed check saw (a Prefect variable, visible in the UI)."""
    value = Variable.get(_checkpoint(model_name))
    return datetime.fromisoformat(value) if value else None


@task(**IO_RETRIES)
def mark_checked(model_name: str, newest: datetime) -> None:
    """Remember the newest request this check saw, so the next check skips when nothing new arrived."""
    Variable.set(_checkpoint(model_name), newest.isoformat(), overwrite=True)


@task(**IO_RETRIES)
def load_episode(model_name: str):
    """The streaks of alarms so far (a Prefect variable holding JSON, visible in the UI)."""
    from flows.lib.drift_policy import EpisodeState

    return EpisodeState.from_json(Variable.get(_episode(model_name)))


@task(**IO_RETRIES)
def save_episode(model_name: str, state) -> None:
    """Keep the streaks for the next check."""
    Variable.set(_episode(model_name), state.to_json(), overwrite=True)


@task(**IO_RETRIES)
def load_calibration(run_id: str, reference, settings: FlowSettings):
    """The champion's drift calibration stored with it; calibrated now for a version registered without one."""
    from flows.lib import registry
    from flows.lib.drift_calibration import VersionCalibration

    try:
        stored = registry.load_run_document(run_id, f"{DRIFT_ARTIFACT_DIR}/{DRIFT_CALIBRATION_FILE}")
        return VersionCalibration.from_dict(stored)
    except Exception as exc:  # noqa: BLE001 - an older version has none: calibrate its reference here
        print(f"no stored drift calibration ({type(exc).__name__}): calibrating the reference now")
        return calibrate_drift(None, reference, None, settings)


@task(**IO_RETRIES)
def peek_traffic(settings: FlowSettings, *, limit: int, minutes: float, enough: int) -> tuple[int, datetime | None]:
    """How many requests the window holds, counted up to `enough`, and the newest one's time (a page at a time)."""
    rows, newest = 0, None
    with traffic_pages(settings, limit=limit, minutes=minutes, labelled=None) as pages:
        for page in pages:
            rows += len(page)
            newest = max([*(r.ts for r in page), *([newest] if newest else [])])
            if rows >= enough:
                break
    return rows, newest


@task(**IO_RETRIES)
def read_window(settings: FlowSettings, reference, calibrated, champion_version: str, *, limit: int, minutes: float):
    """Read the window a page at a time: quality over every row, a seeded sample of its features, served counts."""
    from flows.lib.drift_check import check_config, quality_tally
    from flows.lib.window_reader import read_drift_window

    config = check_config(settings)
    with traffic_pages(settings, limit=limit, minutes=minutes, labelled=None) as pages:
        return read_drift_window(
            pages,
            quality=quality_tally(reference, calibrated, config),
            champion_version=champion_version,
            sample_size=config.max_window_rows,
            seed=config.sample_seed,
        )


@task
def check_window(reference, window, calibrated, settings: FlowSettings):
    """Data quality, the calibrated per-column tests (Evidently), prediction and label drift, accuracy."""
    from flows.lib.drift_check import check_config, run_window_check

    return run_window_check(reference, window, calibrated, config=check_config(settings))


@task(**IO_RETRIES)
def save_run(
    result, summary: str, *, model_name: str, version: str, reports_dir: Path, tracking_uri: str, loop_id: str, metrics
) -> tuple[str, str]:
    """One MLflow run per check: the HTML report, the summary, data quality and calibration, tagged with the loop."""
    from flows.lib import drift as drift_lib
    from flows.lib import registry

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    written = None
    if result.drift is not None:
        written = drift_lib.save_report(result.drift, reports_dir / f"{model_name}-v{version}-{stamp}.html")
    experiment_id, run_id = registry.log_check_run(
        run_name=f"drift {model_name} v{version} {stamp}",
        tags={TAG_KIND: KIND_DRIFT, TAG_LOOP_ID: loop_id, **run_lineage()},
        metrics=metrics,
        params={"model_name": model_name, "champion_version": version},
        texts={f"{DRIFT_ARTIFACT_DIR}/summary.md": summary},
        documents={
            f"{DRIFT_ARTIFACT_DIR}/quality.json": result.quality.as_dict(),
            f"{DRIFT_ARTIFACT_DIR}/{DRIFT_CALIBRATION_FILE}": result.calibration.as_dict(),
        },
        files={"drift_report": written} if written is not None else {},
    )
    return str(written.resolve()) if written is not None else "", mlflow_run_url(tracking_uri, experiment_id, run_id)


@flow(name="drift", flow_run_name=run_name("drift"), log_prints=True)
def drift(
    model_name: str | None = None,
    window_rows: int | None = None,
    window_minutes: float | None = None,
    share_threshold: float | None = None,
) -> dict:
    """Check the recent production window against the champion's reference.

    Args:
        model_name: Registered model (default from settings).
        window_rows: At most this many newest logged requests form the window.
        window_minutes: Only requests newer than this count.
        share_threshold: A check is critical when at least this share of the columns drifted.

    Returns:
        The event payload, or a skip reason.
    """
    from flows.lib import artifacts, drift_policy

    report_startup("drift")
    settings = get_settings()
    model_name = model_name or settings.model_name
    window_rows = window_rows or settings.drift_window_rows
    window_minutes = window_minutes or settings.drift_window_minutes
    share_threshold = settings.drift_share_threshold if share_threshold is None else share_threshold
    settings = settings.model_copy(update={"drift_share_threshold": share_threshold})

    # Asked first, a page at a time: a window too thin or with nothing new skips before MLflow is imported.
    enough = max(settings.drift_min_rows, 1)
    rows, newest = peek_traffic(settings, limit=min(window_rows, enough), minutes=window_minutes, enough=enough)
    if rows < settings.drift_min_rows or newest is None:
        print(f"skipped: only {rows} requests in the window (need {settings.drift_min_rows})")
        return {"skipped": f"{rows} rows in window"}
    previous = last_checked(model_name)
    if previous is not None and newest <= previous:
        print(f"skipped: no request since the last check (newest {newest.isoformat()})")
        return {"skipped": "no new traffic"}

    connect_mlflow(settings)
    champion = find_version(model_name, CHAMPION)
    if champion is None:
        print(f"skipped: no {CHAMPION} for {model_name} yet, nothing to compare")
        return {"skipped": "no champion"}
    version = champion["version"]
    reference = load_reference(model_name, CHAMPION)
    calibrated = load_calibration(champion["run_id"], reference, settings)
    # Read a page at a time: quality over every row, the drift tests' seeded sample, counts of what was served.
    read = read_window(settings, reference, calibrated, version, limit=window_rows, minutes=window_minutes)
    if read.rows < enough:  # rows left the window between the two reads
        print(f"skipped: only {read.rows} requests in the window (need {settings.drift_min_rows})")
        return {"skipped": f"{read.rows} rows in window"}
    newest = read.last_ts
    result = check_window(reference, read, calibrated, settings)
    print(
        f"read {read.rows} requests in {read.pages} pages; the drift tests run on "
        f"{'a seeded sample of ' if read.sampled else ''}{len(read.sample)} of them (seed {read.sample_seed}); "
        f"at most {read.peak_rows} rows held at once"
    )
    window = {
        "window_start": read.first_ts.isoformat(),
        "window_end": newest.isoformat(),
        "window_rows": read.rows,
    }
    title = f"Drift check: {model_name} v{version}"
    save = {
        "model_name": model_name,
        "version": version,
        "reports_dir": settings.home / "reports",
        "tracking_uri": settings.mlflow_tracking_uri,
    }

    if not result.valid:
        summary = artifacts.drift_summary(
            title=title,
            result=result,
            verdict=None,
            persistent=None,
            consecutive=settings.drift_consecutive,
            window_rows=read.rows,
            report_url="",
        )
        _, url = save_run(result, summary, loop_id="", metrics={"valid": 0.0, "window_rows": read.rows}, **save)
        create_markdown_artifact(key="drift-summary", markdown=summary + f"\n\n[MLflow run]({url})")
        wrong = [c.column for c in result.quality.columns if "wrong_type" in c.issues]
        payload = events.DataInvalidPayload(
            model_name=model_name,
            champion_version=version,
            errors=result.quality.schema_errors,
            absent_columns=result.quality.absent_columns,
            wrong_type_columns=wrong,
            extra_columns=result.quality.extra_columns,
            report_url=url,
            **window,
        ).model_dump(mode="json")
        emit(events.DATA_INVALID, model_name, payload, version=version)
        mark_checked(model_name, newest)
        print(f"DATA INVALID: {'; '.join(result.quality.schema_errors)}")
        return payload | {"detected": False, "invalid": True}

    state = drift_policy.update(load_episode(model_name), result.alarms(), version)
    found = drift_policy.persistent(state, settings.drift_consecutive)
    columns = [c.column for c in result.calibration.columns]
    rules = drift_policy.SeverityRules(
        critical_share=share_threshold, important_columns=list(settings.drift_important_columns)
    )
    verdict = drift_policy.verdict(found, columns, rules)
    detected = drift_policy.starts_retrain(verdict.severity, settings.drift_retrain_severity)
    # A detected drift starts a new turn of the loop; retrain, experiment and decision carry its id.
    loop_id = new_id() if detected else ""
    alarmed = [c for c in columns if c in result.alarms()]
    share = len(verdict.drifted_columns) / len(columns) if columns else 0.0
    summary = artifacts.drift_summary(
        title=title,
        result=result,
        verdict=verdict,
        persistent=set(verdict.drifted_columns),
        consecutive=settings.drift_consecutive,
        window_rows=read.rows,
        report_url="",
    )
    metrics = {
        "drift_share": share,
        "drifted_columns": len(verdict.drifted_columns),
        "alarmed_columns": len(alarmed),
        "severity": float(events.SEVERITIES.index(verdict.severity)),
        "window_rows": read.rows,
        "window_sample_rows": result.sample_rows,
    }
    if result.accuracy is not None:
        metrics |= {"accuracy": result.accuracy.accuracy, "accuracy_low": result.accuracy.low}
    path, url = save_run(result, summary, loop_id=loop_id, metrics=metrics, **save)
    accuracy = result.accuracy
    payload = events.DriftPayload(
        model_name=model_name,
        champion_version=version,
        drift_share=share,
        drifted_columns=verdict.drifted_columns,
        n_columns=len(columns),
        report=path,
        report_url=url,
        loop_id=loop_id,
        severity=verdict.severity,
        reason=verdict.reason,
        reasons=verdict.reasons,
        alarmed_columns=alarmed,
        quality_columns=list(result.quality.flagged()),
        consecutive=settings.drift_consecutive,
        prediction_drift=verdict.prediction_drift,
        label_drift=verdict.label_drift,
        labelled_rows=read.served.labelled,
        accuracy=accuracy.accuracy if accuracy else None,
        accuracy_low=accuracy.low if accuracy else None,
        accuracy_high=accuracy.high if accuracy else None,
        holdout_accuracy=calibrated.holdout_accuracy,
        performance_drop=verdict.performance_drop,
        window_sample_rows=result.sample_rows,
        window_sample_seed=result.sample_seed,
        **window,
    ).model_dump(mode="json")

    create_markdown_artifact(
        key="drift-summary", markdown=summary + f"\n\n[MLflow run with the Evidently report]({url})"
    )
    create_link_artifact(key="drift-report", link=url, link_text="Evidently drift report (MLflow)")
    if detected:
        emit(events.DRIFT_DETECTED, model_name, payload, version=version)
    emit(events.DRIFT_CHECKED, model_name, payload, version=version)
    save_episode(model_name, state)
    mark_checked(model_name, newest)
    print(
        f"{'DRIFT DETECTED' if detected else 'checked'}: severity {verdict.severity} ({verdict.reason}); "
        f"{'; '.join(verdict.reasons) or 'no persistent finding'}; alarms this check: "
        f"{', '.join(sorted(result.alarms())) or 'none'} over {read.rows} requests; report {path or url}"
    )
    return payload | {"detected": detected}
