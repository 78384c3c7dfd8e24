"""Manual controls: the moves an operator makes by hand, each a flow (a deployment in the Prefect UI) and a command.

    uv run python -m flows.controls --help
    uv run python -m flows.controls rollback --reason "v7 misroutes refunds" [--to 5] [--by alice]
    uv run python -m flows.controls promote 6 --reason "hotfix validated offline"
    uv run python -m flows.controls retrain --reason "new labels from the audit"
    uv run python -m flows.controls end --reason "experiment no longer needed"
    uv run python -m flows.controls pause --reason "labels of the challenger's users stopped arriving"
    uv run python -m flows.controls resume --reason "label pipeline fixed"

Every control is audited exactly like the loop's own moves: a run in the MLflow alias history with the reason and who
asked, version tags, and a `driftloop.control.<action>` event. The router is told at once (it also picks the move up
on its next alias refresh).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from prefect import flow, task

from contracts import events
from contracts.api import PROMOTE, ROLLBACK, ExperimentEnd, ExperimentPause
from contracts.registry import CHALLENGER, CHAMPION
from flows.settings import get_settings
from flows.tasks import IO_RETRIES, connect_mlflow, emit, find_version, new_id, registry_lock, router, run_name


@task(**IO_RETRIES)
def move_champion_back(
    model_name: str, *, to_version: str | None, reason: str, requested_by: str, decision_id: str
) -> tuple[str, str]:
    """Point `champion` back at the previous (or named) version; returns (before, after)."""
    from flows.lib import registry

    return registry.rollback_champion(
        model_name, to_version=to_version, reason=reason, requested_by=requested_by, decision_id=decision_id
    )


@task(**IO_RETRIES)
def promote_by_hand(model_name: str, version: str, *, reason: str, requested_by: str, decision_id: str) -> str | None:
    """Make `version` the champion (ending any experiment); returns the champion before."""
    from flows.lib import registry

    return registry.promote(model_name, version, reason=reason, decision_id=decision_id, requested_by=requested_by)


@task(**IO_RETRIES)
def retire_by_hand(model_name: str, *, reason: str, requested_by: str, decision_id: str) -> str | None:
    """Remove the challenger alias (the experiment ends); returns the challenger it pointed to."""
    from flows.lib import registry

    return registry.retire_challenger(model_name, reason=reason, decision_id=decision_id, requested_by=requested_by)


@task(**IO_RETRIES)
def tell_router(challenger: str | None, decision: str, reason: str) -> None:
    """End the experiment at the router when one ran, then make it re-read the aliases now."""
    settings = get_settings()
    with router(settings) as client:
        if challenger is not None:
            client.end_experiment(ExperimentEnd(challenger_version=challenger, decision=decision, reason=reason))
        client.reload_models()


def _announce(action: str, model_name: str, *, requested_by: str, reason: str, version: str, previous: str | None,
              decision_id: str) -> dict:  # fmt: skip
    payload = events.ControlPayload(
        model_name=model_name,
        action=action,
        requested_by=requested_by,
        reason=reason,
        version=version,
        previous_version=previous or "",
        decision_id=decision_id,
        loop_id="",
    ).model_dump(mode="json")
    emit(f"{events.CONTROL_PREFIX}{action}", model_name, payload, version=version or None)
    print(f"{action} by {requested_by}: {reason} ({model_name}: {previous or '-'} -> {version or '-'})")
    return payload


def _required(**values: str) -> None:
    missing = [name for name, value in values.items() if not value or not value.strip()]
    if missing:
        raise ValueError(f"a manual control needs {' and '.join(missing)}: say why, and who asks")


@flow(name="rollback", flow_run_name=run_name("rollback"), log_prints=True)
def rollback(reason: str, requested_by: str, model_name: str | None = None, to_version: str | None = None) -> dict:
    """Roll `champion` back to the version it replaced, or to a named one.

    Args:
        reason: Why (recorded with the move).
        requested_by: Who asks.
        model_name: Registered model (default from settings).
        to_version: The version to serve again (default: the one the current champion replaced).

    Returns:
        The control's event payload.
    """
    _required(reason=reason, requested_by=requested_by)
    settings = get_settings()
    model_name = model_name or settings.model_name
    connect_mlflow(settings)
    decision_id = new_id()
    with registry_lock(model_name, wait_seconds=settings.registry_lock_wait_seconds):
        # Read under the lock, just before the move: what the rollback ends is what is served now.
        challenger = find_version(model_name, CHALLENGER)
        before, after = move_champion_back(
            model_name, to_version=to_version, reason=reason, requested_by=requested_by, decision_id=decision_id
        )
    tell_router(challenger["version"] if challenger else None, ROLLBACK, f"{CHAMPION} rolled back: {reason}")
    return _announce("rollback", model_name, requested_by=requested_by, reason=reason, version=after,
                     previous=before, decision_id=decision_id)  # fmt: skip


@flow(name="promote", flow_run_name=run_name("promote"), log_prints=True)
def promote(version: str, reason: str, requested_by: str, model_name: str | None = None) -> dict:
    """Make a named version the champion by hand (any running experiment ends).

    Args:
        version: The registered version to serve.
        reason: Why (recorded with the move).
        requested_by: Who asks.
        model_name: Registered model (default from settings).

    Returns:
        The control's event payload.
    """
    _required(version=version, reason=reason, requested_by=requested_by)
    settings = get_settings()
    model_name = model_name or settings.model_name
    connect_mlflow(settings)
    decision_id = new_id()
    with registry_lock(model_name, wait_seconds=settings.registry_lock_wait_seconds):
        challenger = find_version(model_name, CHALLENGER)  # under the lock, just before the move
        before = promote_by_hand(model_name, version, reason=reason, requested_by=requested_by, decision_id=decision_id)
    if challenger is not None:
        decision = PROMOTE if challenger["version"] == version else ROLLBACK
        tell_router(challenger["version"], decision, f"promoted v{version} by hand: {reason}")
    else:
        tell_router(None, PROMOTE, reason)
    return _announce("promote", model_name, requested_by=requested_by, reason=reason, version=version,
                     previous=before, decision_id=decision_id)  # fmt: skip


@flow(name="end-experiment", flow_run_name=run_name("end-experiment"), log_prints=True)
def end_experiment(reason: str, requested_by: str, model_name: str | None = None) -> dict:
    """End the running experiment by hand: the challenger stops serving, the champion stays.

    Args:
        reason: Why (recorded with the move).
        requested_by: Who asks.
        model_name: Registered model (default from settings).

    Returns:
        The control's event payload.
    """
    _required(reason=reason, requested_by=requested_by)
    settings = get_settings()
    model_name = model_name or settings.model_name
    connect_mlflow(settings)
    decision_id = new_id()
    with registry_lock(model_name, wait_seconds=settings.registry_lock_wait_seconds):
        challenger = retire_by_hand(model_name, reason=reason, requested_by=requested_by, decision_id=decision_id)
    if challenger is None:
        print(f"{model_name} has no {CHALLENGER}: no experiment to end")
    tell_router(challenger, ROLLBACK, f"ended by hand: {reason}")
    return _announce("end", model_name, requested_by=requested_by, reason=reason, version="", previous=challenger,
                     decision_id=decision_id)  # fmt: skip


@task(**IO_RETRIES)
def audit_pause(model_name: str, version: str, *, reason: str, requested_by: str, decision_id: str) -> str:
    """Record a pause or resume in the alias history (the alias stays: from and to are the same version)."""
    from flows.lib import registry

    move = registry.AliasMove(model_name, CHALLENGER, version, version, reason, decision_id, "", {}, requested_by)
    return registry.record_move(move)


@task(retries=2, retry_delay_seconds=[2, 5])
def pause_or_resume_at_router(action: str, challenger: str, reason: str) -> str:
    """Pause or resume the experiment of `challenger` at the router; returns its status after."""
    with router(get_settings()) as client:
        body = ExperimentPause(challenger_version=challenger, reason=reason)
        done = client.pause_experiment(body) if action == "pause" else client.resume_experiment(body)
    return done.status


def _pause_or_resume(action: str, reason: str, requested_by: str, model_name: str | None) -> dict:
    _required(reason=reason, requested_by=requested_by)
    settings = get_settings()
    model_name = model_name or settings.model_name
    connect_mlflow(settings)
    challenger = find_version(model_name, CHALLENGER)
    if challenger is None:
        raise LookupError(f"{model_name} has no {CHALLENGER}: no experiment to {action}")
    version, decision_id = challenger["version"], new_id()
    status = pause_or_resume_at_router(action, version, reason)
    verb = "paused" if action == "pause" else "resumed"
    audit_pause(model_name, version, reason=f"experiment {verb}: {reason}", requested_by=requested_by,
                decision_id=decision_id)  # fmt: skip
    print(f"experiment of v{version} is {status}")
    return _announce(action, model_name, requested_by=requested_by, reason=reason, version=version, previous=version,
                     decision_id=decision_id)  # fmt: skip


@flow(name="pause-experiment", flow_run_name=run_name("pause-experiment"), log_prints=True)
def pause_experiment(reason: str, requested_by: str, model_name: str | None = None) -> dict:
    """Pause the running experiment: the champion serves everyone, the challenger keeps its alias, no look decides
    until it is resumed (a paused experiment at its maximum duration is rolled back).

    Args:
        reason: Why (recorded in the alias history and the event).
        requested_by: Who asks.
        model_name: Registered model (default from settings).

    Returns:
        The control's event payload.
    """
    return _pause_or_resume("pause", reason, requested_by, model_name)


@flow(name="resume-experiment", flow_run_name=run_name("resume-experiment"), log_prints=True)
def resume_experiment(reason: str, requested_by: str, model_name: str | None = None) -> dict:
    """Resume a paused experiment: the split applies again, and a sample ratio mismatch is from then on reported but
    not acted on (the operator judged it explained).

    Args:
        reason: Why (recorded in the alias history and the event).
        requested_by: Who asks.
        model_name: Registered model (default from settings).

    Returns:
        The control's event payload.
    """
    return _pause_or_resume("resume", reason, requested_by, model_name)


@flow(name="retrain-now", flow_run_name=run_name("retrain-now"), log_prints=True)
def retrain_now(reason: str, requested_by: str, model_name: str | None = None, force: bool = False) -> dict:
    """Start the retrain deployment now, recorded as a manual trigger (same flow, gate and one-in-flight rule).

    Args:
        reason: Why (recorded with the control's event).
        requested_by: Who asks.
        model_name: Registered model (default from settings).
        force: Retrain even while a challenger is under test.

    Returns:
        The control's event payload, with the retrain flow run's id.
    """
    from prefect.deployments import run_deployment

    _required(reason=reason, requested_by=requested_by)
    settings = get_settings()
    model_name = model_name or settings.model_name
    run = run_deployment(
        "retrain/retrain",
        parameters={"model_name": model_name, "trigger": "manual", "force": force},
        timeout=0,  # started, not waited for: the retrain is its own run in the UI
        tags=["manual"],
    )
    print(f"retrain run {run.name} ({run.id}) started")
    payload = _announce("retrain", model_name, requested_by=requested_by, reason=reason, version="", previous=None,
                        decision_id=new_id())  # fmt: skip
    return payload | {"flow_run_id": str(run.id)}


CONTROLS = {
    "rollback": rollback,
    "promote": promote,
    "end": end_experiment,
    "pause": pause_experiment,
    "resume": resume_experiment,
    "retrain": retrain_now,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.controls",
        description="Manual controls of the loop. Each runs as a Prefect flow run (PREFECT_API_URL must be set) and "
        "is audited like the loop's own moves.",
    )
    parser.add_argument("--model", help="registered model (default: DRIFTLOOP_MODEL_NAME)")
    parser.add_argument("--by", default=getpass.getuser(), help="who asks (default: your user name)")
    sub = parser.add_subparsers(dest="action", required=True)
    one = sub.add_parser("rollback", help="roll champion back to the version it replaced, or to --to")
    one.add_argument("--to", help="the version to serve again")
    one.add_argument("--reason", required=True)
    one = sub.add_parser("promote", help="make a named version the champion")
    one.add_argument("version")
    one.add_argument("--reason", required=True)
    one = sub.add_parser("end", help="end the running experiment (the challenger stops serving)")
    one.add_argument("--reason", required=True)
    one = sub.add_parser("pause", help="pause the running experiment (the champion serves everyone)")
    one.add_argument("--reason", required=True)
    one = sub.add_parser("resume", help="resume the paused experiment")
    one.add_argument("--reason", required=True)
    one = sub.add_parser("retrain", help="start the retrain deployment now")
    one.add_argument("--force", action="store_true", help="retrain even while a challenger is under test")
    one.add_argument("--reason", required=True)
    args = parser.parse_args(argv)
    if not os.environ.get("PREFECT_API_URL"):
        parser.error("PREFECT_API_URL is not set: point it at the Prefect server the loop runs on")
    common = {"reason": args.reason, "requested_by": args.by, "model_name": args.model}
    if args.action == "rollback":
        result = rollback(**common, to_version=args.to)
    elif args.action == "promote":
        result = promote(version=args.version, **common)
    elif args.action == "end":
        result = end_experiment(**common)
    elif args.action == "pause":
        result = pause_experiment(**common)
    elif args.action == "resume":
        result = resume_experiment(**common)
    else:
        result = retrain_now(**common, force=args.force)
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
