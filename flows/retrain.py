"""Retrain flow: PyCaret AutoML on reference plus fresh labelled traffic; a gated candidate becomes challenger."""

from __future__ import annotations

import uuid

import msgspec
import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from contracts import events
from contracts.api import ExperimentPlan
from contracts.registry import CHALLENGER, CHAMPION, TAG_GATE, TAG_LOOP_ID, plan_tags
from flows.lib import experiment
from flows.lib.router import RouterClient
from flows.settings import FlowSettings, get_settings
from flows.tasks import (
    connect_mlflow,
    emit,
    fetch_traffic,
    find_version,
    frame_from_traffic,
    load_reference,
    register_candidate,
    run_name,
    set_alias,
    tag_version,
    train_candidate,
)


@task(retries=3, retry_delay_seconds=[2, 5, 10])
def score_champion(model_name: str, data: pd.DataFrame, target: str) -> dict[str, float]:
    """The champion's metrics on some labelled rows (the candidate's holdout, or fresh traffic)."""
    from flows.lib import registry, training

    return training.evaluate(registry.load_pipeline(model_name, CHAMPION), data, target)


@task
def plan_experiment(
    settings: FlowSettings, *, champion_version: str, challenger_version: str, baseline: float, loop_id: str
) -> ExperimentPlan:
    """Size the A/B experiment for the challenger: alpha, power, MDE, baseline, samples, duration, guardrails."""
    sequential_n, fixed_n = experiment.plan_sample_size(
        baseline=baseline, mde=settings.ab_mde, alpha=settings.ab_alpha, power=settings.ab_power
    )
    return ExperimentPlan(
        champion_version=champion_version,
        challenger_version=challenger_version,
        alpha=settings.ab_alpha,
        power=settings.ab_power,
        mde=settings.ab_mde,
        baseline=baseline,
        min_samples_per_arm=sequential_n,
        fixed_horizon_samples_per_arm=fixed_n,
        ab_split_b=settings.ab_split_b,
        max_duration_hours=settings.ab_max_duration_hours,
        srm_threshold=settings.ab_srm_threshold,
        guardrail_error_margin=settings.ab_guardrail_error_margin,
        guardrail_latency_margin=settings.ab_guardrail_latency_margin,
        guardrail_latency_slack_ms=settings.ab_guardrail_latency_slack_ms,
        loop_id=loop_id,
    )


@task(retries=3, retry_delay_seconds=[2, 5, 10])
def send_plan(settings: FlowSettings, plan: ExperimentPlan) -> None:
    """Give the router the plan (it keeps it with the experiment and sets the split)."""
    with RouterClient(settings.router_url, tokens=settings, timeout=settings.http_timeout_seconds) as router:
        router.set_plan(plan)


def passes_gate(candidate: dict[str, float], champion: dict[str, float], min_f1: float) -> tuple[bool, str]:
    """A candidate must reach the absolute F1 floor and match the champion on the same holdout."""
    f1, champion_f1 = candidate["f1_macro"], champion["f1_macro"]
    if f1 < min_f1:
        return False, f"holdout F1 {f1:.3f} below the floor {min_f1}"
    if f1 < champion_f1:
        return False, f"holdout F1 {f1:.3f} below the champion's {champion_f1:.3f} on the same rows"
    return True, f"holdout F1 {f1:.3f} >= floor {min_f1} and >= champion's {champion_f1:.3f}"


@flow(name="retrain", flow_run_name=run_name("retrain"), log_prints=True)
def retrain(
    model_name: str | None = None,
    drift_share: float | None = None,
    drifted_columns: list[str] | None = None,
    report_url: str | None = None,
    loop_id: str = "",
    force: bool = False,
) -> dict:
    """Train a candidate on the champion's reference plus fresh labelled traffic and register it.

    Args:
        model_name: Registered model (default from settings).
        drift_share: Share of drifted columns that triggered this run (for the record).
        drifted_columns: Columns that drifted (for the record).
        report_url: Where the drift report that triggered this run is.
        loop_id: The turn of the loop this run belongs to (a new one when empty).
        force: Retrain even while a challenger is already under test.

    Returns:
        What happened: the new version and whether it became challenger, or why nothing was trained.
    """
    settings = get_settings()
    model_name = model_name or settings.model_name
    loop_id = loop_id or uuid.uuid4().hex[:12]
    connect_mlflow(settings)

    champion = find_version(model_name, CHAMPION)
    if champion is None:
        raise RuntimeError(f"{model_name} has no {CHAMPION}: run the bootstrap flow first")
    challenger = find_version(model_name, CHALLENGER)
    if challenger is not None and not force:
        print(f"v{challenger['version']} is already under A/B test as {CHALLENGER}: not retraining")
        return {"skipped": f"challenger v{challenger['version']} under test"}

    reference = load_reference(model_name, CHAMPION)
    records = fetch_traffic(settings, limit=settings.retrain_max_labelled, minutes=None, labelled=True)
    fresh = frame_from_traffic(records, reference, settings.target, labelled=True)
    if len(fresh) < settings.retrain_min_labelled:
        print(f"only {len(fresh)} labelled requests (need {settings.retrain_min_labelled}): not retraining")
        return {"skipped": f"{len(fresh)} labelled rows"}
    training_data = pd.concat([reference, fresh], ignore_index=True)
    # The newest traffic is what the new model will see: it becomes the reference for the next drift checks.
    new_reference = fresh.head(settings.drift_window_rows) if len(fresh) >= settings.drift_min_rows else training_data
    print(f"training on {len(reference)} reference + {len(fresh)} fresh labelled rows")

    result = train_candidate(training_data, settings)
    champion_metrics = score_champion(model_name, result.holdout, settings.target)
    passed, why = passes_gate(result.holdout_metrics, champion_metrics, settings.gate_min_f1)
    registered = register_candidate(
        result,
        training_data=training_data,
        reference=new_reference,
        settings=settings,
        model_name=model_name,
        run_name=f"retrain {model_name} from v{champion['version']}",
        extra_metrics={f"champion_holdout_{k}": v for k, v in champion_metrics.items()}
        | ({"trigger_drift_share": drift_share} if drift_share is not None else {}),
        tags={
            "driftloop.trigger": "drift" if drift_share is not None else "manual",
            "driftloop.drifted_columns": ",".join(drifted_columns or []),
            "driftloop.drift_report": report_url or "",
            "driftloop.parent_champion": champion["version"],
            TAG_LOOP_ID: loop_id,
        },
    )
    version = registered["version"]
    tags = {TAG_GATE: "passed" if passed else "failed", f"{TAG_GATE}.reason": why, TAG_LOOP_ID: loop_id}
    plan = None
    if passed:
        observed = score_champion(model_name, fresh, settings.target)["accuracy"]
        # A lift of `mde` must fit under 100%: a champion already near perfect is planned against 1 - mde.
        baseline = min(observed, 1.0 - settings.ab_mde - 0.005)
        plan = plan_experiment(
            settings, champion_version=champion["version"], challenger_version=version, baseline=baseline,
            loop_id=loop_id,
        )  # fmt: skip
        tags |= plan_tags(plan)
    tag_version(model_name, version, tags)
    if plan is not None:
        # The plan reaches the router before the alias, so the experiment has it from its first request.
        send_plan(settings, plan)
        set_alias(model_name, CHALLENGER, version, reason=f"passed the quality gate: {why}", loop_id=loop_id)
        print(
            f"experiment planned: baseline accuracy {plan.baseline:.3f}, MDE {plan.mde}, alpha {plan.alpha}, "
            f"power {plan.power}: {plan.min_samples_per_arm} labelled outcomes per arm "
            f"(single-look test: {plan.fixed_horizon_samples_per_arm}), at most {plan.max_duration_hours} h"
        )
    print(f"v{version} ({result.model_id}) {'is the new ' + CHALLENGER if passed else 'failed the gate'}: {why}")

    summary = {
        "version": version,
        "run_id": registered["run_id"],
        "best_model": result.model_id,
        "gate_passed": passed,
        "gate_reason": why,
        "holdout": result.holdout_metrics,
        "champion_holdout": champion_metrics,
        "loop_id": loop_id,
        "plan": msgspec.structs.asdict(plan) if plan else None,
    }
    create_markdown_artifact(
        key="retrain-summary",
        markdown=(
            f"# Retrain: {model_name} v{version}\n\nBest model `{result.model_id}` trained on "
            f"{len(training_data)} rows ({len(fresh)} fresh). Gate **{'passed' if passed else 'failed'}**: {why}.\n\n"
            "| metric | candidate | champion |\n|---|---|---|\n"
            + "\n".join(
                f"| {k} | {v:.3f} | {champion_metrics.get(k, float('nan')):.3f} |"
                for k, v in result.holdout_metrics.items()
            )
        ),
    )
    emit(
        events.MODEL_REGISTERED,
        model_name,
        events.RegisteredPayload(
            model_name=model_name,
            version=version,
            run_id=registered["run_id"],
            gate_passed=passed,
            metrics={f"holdout_{k}": v for k, v in result.holdout_metrics.items()},
        ).model_dump(mode="json"),
        version=version,
        run_id=registered["run_id"],
    )
    return summary
