"""Retrain flow: PyCaret AutoML on reference plus fresh labelled traffic; a gated candidate becomes challenger."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import msgspec
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from contracts import events
from contracts.api import ExperimentPlan
from contracts.registry import CHALLENGER, CHAMPION, TAG_GATE, TAG_LOOP_ID, plan_tags
from flows.lib.gate import latency_budget_ms, passes_gate
from flows.settings import FlowSettings, get_settings
from flows.tasks import (
    IO_RETRIES,
    connect_mlflow,
    emit,
    fetch_traffic,
    find_version,
    frame_from_traffic,
    load_reference,
    register_candidate,
    report_startup,
    router,
    run_name,
    set_alias,
    tag_version,
    train_candidate,
)

if TYPE_CHECKING:
    import pandas as pd


@task(**IO_RETRIES)
def load_champion(model_name: str) -> Any:
    """The champion's fitted pipeline from the registry."""
    from flows.lib import registry

    return registry.load_pipeline(model_name, CHAMPION)


@task
def measure_cost(pipeline: Any, features: pd.DataFrame) -> float:
    """CPU ms of one single-row predict of a pipeline on this machine (median of several)."""
    from flows.lib import training

    return training.measure_serving_cost(pipeline, features).single_row_ms


@task
def score(pipeline: Any, data: pd.DataFrame, target: str) -> dict[str, float]:
    """A pipeline's metrics on labelled rows (the candidate's holdout, or fresh traffic)."""
    from flows.lib import training

    return training.evaluate(pipeline, data, target)


@task
def plan_experiment(
    settings: FlowSettings, *, champion_version: str, challenger_version: str, baseline: float, loop_id: str
) -> ExperimentPlan:
    """Size the A/B experiment for the challenger: alpha, power, MDE, baseline, samples, duration, guardrails."""
    from flows.lib import experiment

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


@task(**IO_RETRIES)
def send_plan(settings: FlowSettings, plan: ExperimentPlan) -> None:
    """Give the router the plan (it keeps it with the experiment and sets the split)."""
    with router(settings) as client:
        client.set_plan(plan)


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
    startup_cpu = report_startup("retrain")
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
    import pandas as pd  # here, not at module level: a run that skips never pays for it

    training_data = pd.concat([reference, fresh], ignore_index=True)
    # The newest traffic is what the new model will see: it becomes the reference for the next drift checks.
    new_reference = fresh.head(settings.drift_window_rows) if len(fresh) >= settings.drift_min_rows else training_data
    print(f"training on {len(reference)} reference + {len(fresh)} fresh labelled rows")

    # The winner must fit the serving budget: the guardrail's limit on what the champion costs on this machine.
    champion_pipeline = load_champion(model_name)
    features = training_data.drop(columns=[settings.target])
    champion_ms = measure_cost(champion_pipeline, features)
    budget = latency_budget_ms(
        budget_ms=settings.retrain_latency_budget_ms,
        champion_single_row_ms=champion_ms,
        guardrail_margin=settings.ab_guardrail_latency_margin,
        guardrail_slack_ms=settings.ab_guardrail_latency_slack_ms,
    )
    result = train_candidate(training_data, settings, latency_budget_ms=budget)
    champion_metrics = score(champion_pipeline, result.holdout, settings.target)
    passed, why = passes_gate(
        result.holdout_metrics,
        champion_metrics,
        settings.gate_min_f1,
        candidate_ms=result.chosen_cost.single_row_ms,
        budget_ms=budget,
    )
    registered = register_candidate(
        result,
        training_data=training_data,
        reference=new_reference,
        settings=settings,
        model_name=model_name,
        run_name=f"retrain {model_name} from v{champion['version']}",
        extra_metrics={f"champion_holdout_{k}": v for k, v in champion_metrics.items()}
        | {"champion_serving_predict_ms_1row": champion_ms, "startup_cpu_seconds": startup_cpu}
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
        observed = score(champion_pipeline, fresh, settings.target)["accuracy"]
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
    for candidate in result.candidates:
        print(
            f"candidate {candidate.model_id}: CV F1 {candidate.cv_f1:.3f}, predict "
            f"{candidate.serving_cost.single_row_ms:.1f} ms CPU per row, "
            f"{candidate.serving_cost.batch_ms:.1f} ms per {candidate.serving_cost.batch_rows} rows"
            f"{'' if candidate.within_budget else ' (over the budget)'}"
        )

    summary = {
        "version": version,
        "run_id": registered["run_id"],
        "best_model": result.model_id,
        "gate_passed": passed,
        "gate_reason": why,
        "holdout": result.holdout_metrics,
        "champion_holdout": champion_metrics,
        "predict_ms_1row": result.serving_cost.single_row_ms,
        "champion_predict_ms_1row": champion_ms,
        "latency_budget_ms": budget,
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
            + f"\n| predict, CPU ms per row | {result.serving_cost.single_row_ms:.1f} | {champion_ms:.1f} |\n\n"
            f"Candidates (latency budget {budget:.1f} ms CPU per row):\n\n"
            "| model | CV F1 | CPU ms per row | CPU ms per 32 rows | within budget |\n|---|---|---|---|---|\n"
            + "\n".join(
                f"| {c.model_id}{' (chosen)' if c.model_id == result.model_id else ''} | {c.cv_f1:.3f} | "
                f"{c.serving_cost.single_row_ms:.1f} | {c.serving_cost.batch_ms:.1f} | {c.within_budget} |"
                for c in result.candidates
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
    if not passed:
        rejected = events.RejectedPayload(
            model_name=model_name, version=version, run_id=registered["run_id"], reason=why, loop_id=loop_id
        )
        emit(events.MODEL_REJECTED, model_name, rejected.model_dump(mode="json"), version=version)
    return summary
