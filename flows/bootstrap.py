"""Bootstrap flow: when no champion exists, train a first model on the reference data and make it champion."""

from __future__ import annotations

from prefect import flow, task

from contracts import events
from contracts.registry import CHAMPION, GATE_BOOTSTRAP, TAG_GATE, TAG_TRIGGER, TRIGGER_BOOTSTRAP
from flows.lib.drift_policy import reference_sample
from flows.settings import get_settings
from flows.tasks import (
    connect_mlflow,
    current_aliases,
    emit,
    find_version,
    register_candidate,
    registry_lock,
    report_startup,
    run_name,
    set_alias,
    tag_version,
    train_candidate,
)


@task
def load_dataset(dataset: str, target: str):
    """Read the reference dataset (iris or a CSV/Parquet file)."""
    from flows.lib import data

    return data.load_dataset(dataset, target)


@flow(name="bootstrap", flow_run_name=run_name("bootstrap"), log_prints=True)
def bootstrap(model_name: str | None = None, force: bool = False) -> dict:
    """Train, register and crown a first champion unless one exists.

    Args:
        model_name: Registered model (default from settings).
        force: Train and crown a new champion even if one exists.

    Returns:
        The champion's version and run id.
    """
    report_startup("bootstrap")
    settings = get_settings()
    model_name = model_name or settings.model_name
    connect_mlflow(settings)
    existing = find_version(model_name, CHAMPION)
    if existing is not None and not force:
        print(f"{model_name} already has a {CHAMPION}: v{existing['version']}")
        return existing | {"created": False}

    reference = load_dataset(settings.dataset, settings.target)
    result = train_candidate(reference, settings)
    registered = register_candidate(
        result,
        training_data=reference,
        reference=reference_sample(reference, settings.drift_reference_rows, settings.session_id),
        settings=settings,
        model_name=model_name,
        run_name=f"bootstrap {model_name}",
        tags={TAG_TRIGGER: TRIGGER_BOOTSTRAP},
    )
    tag_version(model_name, registered["version"], {TAG_GATE: GATE_BOOTSTRAP})
    with registry_lock(model_name, wait_seconds=settings.registry_lock_wait_seconds):
        # Re-read under the lock: another bootstrap may have crowned its own model while this one trained.
        crowned = current_aliases(model_name)[CHAMPION]
        if crowned is not None and crowned != (existing or {}).get("version") and not force:
            print(f"v{crowned} became {CHAMPION} while this run trained: v{registered['version']} stays uncrowned")
            return {"version": crowned, "created": False}
        set_alias(model_name, CHAMPION, registered["version"], reason="bootstrap: no champion existed")
    print(f"v{registered['version']} ({result.model_id}) is {CHAMPION}; holdout {result.holdout_metrics}")
    emit(
        events.MODEL_REGISTERED,
        model_name,
        events.RegisteredPayload(
            model_name=model_name,
            version=registered["version"],
            run_id=registered["run_id"],
            gate_passed=True,
            metrics={f"holdout_{k}": v for k, v in result.holdout_metrics.items()},
        ).model_dump(mode="json"),
        version=registered["version"],
        run_id=registered["run_id"],
    )
    return registered | {"created": True}
