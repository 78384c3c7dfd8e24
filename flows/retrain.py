"""Retrain flow: PyCaret AutoML on a deliberate data window; a candidate that beats the champion fairly is challenger.

One flow for every trigger (the drift automation, the weekly `retrain-scheduled` deployment, a manual run): the same
window policy, training, gate and one-candidate-in-flight rule, and the run records which trigger started it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from contracts import events
from contracts.api import ArmOutcome, ExperimentPlan
from contracts.registry import (
    CHALLENGER,
    CHAMPION,
    GATE_ARTIFACT_DIR,
    GATE_EVIDENCE_FILE,
    GATE_FAILED,
    GATE_HOLDOUT_FILE,
    GATE_PASSED,
    TAG_DATA_HASH,
    TAG_DATA_ROWS,
    TAG_DRIFT_REPORT,
    TAG_DRIFTED_COLUMNS,
    TAG_GATE,
    TAG_GATE_REASON,
    TAG_LOOP_ID,
    TAG_ORIGINAL_RUN,
    TAG_PARENT_CHAMPION,
    TAG_TRIGGER,
    TAG_TRIGGER_EVENT,
    TAG_WINDOW,
    TRAINING_ARTIFACT_DIR,
    TRIGGER_DRIFT,
    TRIGGER_MANUAL,
    WINDOW_FILE,
    RetrainTrigger,
    plan_tags,
)
from flows.lib import artifacts
from flows.lib.drift_policy import reference_sample, stale_drift
from flows.lib.gate import latency_budget_ms, passes_gate
from flows.settings import FlowSettings, get_settings
from flows.tasks import (
    IO_RETRIES,
    connect_mlflow,
    current_aliases,
    emit,
    find_version,
    new_id,
    register_candidate,
    registry_lock,
    report_startup,
    retrain_slot,
    router,
    run_lineage,
    run_name,
    set_alias,
    tag_version,
    traffic_pages,
    train_candidate,
)

if TYPE_CHECKING:
    import pandas as pd

    from flows.lib.comparison import HoldoutComparison
    from flows.lib.window import History, TrainingWindow


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


@task(**IO_RETRIES)
def load_history(model_name: str) -> History:
    """The original training rows (from the run that holds them) and the row ids the champion was trained on."""
    from flows.lib import registry

    return registry.load_history(model_name, CHAMPION)


@task(**IO_RETRIES)
def read_labelled_traffic(history: History, settings: FlowSettings) -> pd.DataFrame:
    """The window's newest labelled requests as training rows, each page turned into rows as it arrives."""
    from flows.lib.window_reader import read_traffic_rows

    minutes = settings.retrain_window_days * 1440
    with traffic_pages(settings, limit=settings.retrain_max_labelled, minutes=minutes, labelled=True) as pages:
        rows = read_traffic_rows(pages, history.rows, settings.target)
    print(f"read {len(rows)} labelled requests of the last {settings.retrain_window_days:g} days, a page at a time")
    return rows


@task
def cut_window(history: History, traffic: pd.DataFrame, settings: FlowSettings, now: datetime):
    """Cut the training rows and the gate's holdout from the original data and the window's labelled traffic."""
    from flows.lib import window

    policy = window.WindowPolicy(
        days=settings.retrain_window_days,
        history_share=settings.retrain_history_share,
        max_rows=settings.retrain_max_rows,
        holdout_share=settings.gate_holdout_share,
        min_holdout_rows=settings.gate_min_holdout_rows,
        seed=settings.session_id,
    )
    return window.select_window(history, traffic, policy=policy, now=now, target=settings.target)


@task
def window_shortfall(cut: TrainingWindow, settings: FlowSettings) -> str | None:
    """Why the window is too thin to retrain on, or None."""
    from flows.lib import window

    return window.shortfall(cut, min_traffic=settings.retrain_min_labelled, min_holdout=settings.gate_min_holdout_rows)


@task
def compare_on_holdout(candidate: Any, champion: Any, holdout: pd.DataFrame, settings: FlowSettings):
    """Score both models on the gate's holdout, with an interval on their F1 difference."""
    import numpy as np

    from flows.lib import comparison, training

    features, labels = holdout.drop(columns=[settings.target]), holdout[settings.target]
    return comparison.HoldoutComparison(
        candidate=training.evaluate(candidate, holdout, settings.target),
        champion=training.evaluate(champion, holdout, settings.target),
        f1=comparison.paired_difference(
            labels,
            np.asarray(candidate.predict(features)),
            np.asarray(champion.predict(features)),
            metric="f1_macro",
            confidence=settings.gate_confidence,
            resamples=settings.gate_resamples,
            seed=settings.session_id,
        ),
    )


@task
def score(pipeline: Any, data: pd.DataFrame, target: str) -> dict[str, float]:
    """A pipeline's metrics on labelled rows (the candidate's holdout, or fresh traffic)."""
    from flows.lib import training

    return training.evaluate(pipeline, data, target)


@task(**IO_RETRIES)
def champion_traffic(settings: FlowSettings) -> ArmOutcome | None:
    """The champion's arm of the router's current outcomes (its recent traffic: rates and per-user sums)."""
    with router(settings) as client:
        outcomes = client.outcomes()
    return outcomes.arm(CHAMPION)


@task
def planned_baseline(observed: float, settings: FlowSettings) -> float:
    """The champion's level the experiment is planned against (see `ab_plan.plannable_baseline`)."""
    from flows.lib import ab_plan

    return ab_plan.plannable_baseline(observed, mde=settings.ab_mde, relative=settings.ab_mde_relative)


def plan_experiment(
    settings: FlowSettings,
    *,
    champion_version: str,
    challenger_version: str,
    baseline: float,
    loop_id: str,
    traffic: ArmOutcome | None,
) -> ExperimentPlan:
    """Size the A/B experiment for the challenger: design effect, feasibility, alpha, power, MDE, guardrails."""
    from flows.lib import ab_plan

    inputs = ab_plan.PlanInputs(
        champion_version=champion_version,
        challenger_version=challenger_version,
        baseline=baseline,
        alpha=settings.ab_alpha,
        power=settings.ab_power,
        mde=settings.ab_mde,
        mde_relative=settings.ab_mde_relative,
        ab_split_b=settings.ab_split_b,
        max_duration_hours=settings.ab_max_duration_hours,
        srm_threshold=settings.ab_srm_threshold,
        guardrail_error_margin=settings.ab_guardrail_error_margin,
        guardrail_error_margin_relative=settings.ab_guardrail_error_margin_relative,
        guardrail_latency_margin=settings.ab_guardrail_latency_margin,
        guardrail_latency_slack_ms=settings.ab_guardrail_latency_slack_ms,
        watch_hours=settings.ab_watch_hours,
        loop_id=loop_id,
    )
    return ab_plan.make_plan(inputs, traffic)


def report_infeasible(model_name: str, plan: ExperimentPlan) -> None:
    """An infeasible plan is said at once: an event, and a markdown artifact on this run."""
    payload = events.InfeasiblePayload(
        model_name=model_name,
        champion_version=plan.champion_version,
        challenger_version=plan.challenger_version,
        min_samples_per_arm=plan.min_samples_per_arm,
        expected_hours=plan.expected_hours,
        max_duration_hours=plan.max_duration_hours,
        feasibility=plan.feasibility,
        loop_id=plan.loop_id,
    ).model_dump(mode="json")
    emit(events.EXPERIMENT_INFEASIBLE, model_name, payload, version=plan.challenger_version)
    create_markdown_artifact(key="ab-plan-infeasible", markdown=artifacts.infeasible_plan(model_name, plan))
    print(f"INFEASIBLE plan: {plan.feasibility}")


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
    trigger: RetrainTrigger | None = None,
    trigger_event_id: str = "",
    drift_champion_version: str = "",
) -> dict:
    """Train a candidate on the window policy's rows, judge it against the champion on unseen rows, register it.

    Args:
        model_name: Registered model (default from settings).
        drift_share: Share of drifted columns that triggered this run (for the record).
        drifted_columns: Columns that drifted (for the record).
        report_url: Where the drift report that triggered this run is.
        loop_id: The turn of the loop this run belongs to (a new one when empty).
        force: Retrain even while a challenger is already under test.
        trigger: What started the run: `drift`, `schedule` or `manual` (default: `drift` when a drift share is
            given, else `manual`).
        trigger_event_id: The Prefect event that started it (the drift automation passes it), for the lineage.
        drift_champion_version: The champion the drift was measured against (the drift automation passes it): when
            another version is champion by the time this run starts, the drift is old news and nothing is trained.

    Returns:
        What happened: the new version and whether it became challenger, or why nothing was trained.
    """
    startup_cpu = report_startup("retrain")
    settings = get_settings()
    model_name = model_name or settings.model_name
    trigger = trigger or (TRIGGER_DRIFT if drift_share is not None else TRIGGER_MANUAL)
    loop_id = loop_id or new_id()
    connect_mlflow(settings)

    # One candidate in flight per model: one retrain at a time, whatever started it, and none while a challenger
    # is under test. The challenger is checked inside the slot, so two runs cannot both pass the check.
    with retrain_slot(model_name, wait_seconds=settings.retrain_slot_wait_seconds) as held:
        if not held:
            return skip(model_name, trigger, "another retrain of this model is running")
        champion = find_version(model_name, CHAMPION)
        if champion is None:
            raise RuntimeError(f"{model_name} has no {CHAMPION}: run the bootstrap flow first")
        stale = stale_drift(drift_champion_version, champion["version"])
        if stale is not None and not force:
            return skip(model_name, trigger, stale)
        challenger = find_version(model_name, CHALLENGER)
        if challenger is not None and not force:
            return skip(model_name, trigger, f"v{challenger['version']} is already under A/B test as {CHALLENGER}")

        history = load_history(model_name)
        now = datetime.now(UTC)
        traffic = read_labelled_traffic(history, settings)
        window = cut_window(history, traffic, settings, now)
        thin = window_shortfall(window, settings)
        if thin is not None:
            return skip(model_name, trigger, thin)
        fresh = window.recent  # every labelled request of the window, newest first
        training_data = window.training_data
        # The next drift checks compare against a seeded random sample of the training rows (flows/lib/drift_policy.py).
        new_reference = reference_sample(training_data, settings.drift_reference_rows, settings.session_id)
        record = window.record
        print(
            f"{trigger} retrain on {record.training_rows} rows: {record.history.rows} of {record.history.available} "
            f"original, {record.traffic.rows} of {record.traffic.available} labelled requests since {record.since}; "
            f"gate holdout {record.holdout.rows} requests the champion never saw"
        )

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
        evidence = compare_on_holdout(result.pipeline, champion_pipeline, window.holdout_data, settings)
        passed, why = passes_gate(
            evidence.candidate,
            evidence.champion,
            settings.gate_min_f1,
            candidate_ms=result.chosen_cost.single_row_ms,
            budget_ms=budget,
            interval=(evidence.f1.low, evidence.f1.high),
            max_loss=settings.gate_max_loss,
        )
        gate_tags = {TAG_GATE: GATE_PASSED if passed else GATE_FAILED, TAG_GATE_REASON: why}
        registered = register_candidate(
            result,
            training_data=training_data,
            reference=new_reference,
            settings=settings,
            model_name=model_name,
            run_name=f"retrain {model_name} from v{champion['version']} ({trigger})",
            extra_metrics=gate_metrics(evidence)
            | {"champion_serving_predict_ms_1row": champion_ms, "startup_cpu_seconds": startup_cpu}
            | ({"trigger_drift_share": drift_share} if drift_share is not None else {}),
            tags={
                TAG_TRIGGER: trigger,
                TAG_TRIGGER_EVENT: trigger_event_id,
                **run_lineage(),
                TAG_DATA_ROWS: str(record.training_rows),
                TAG_DATA_HASH: record.training_hash,
                TAG_WINDOW: f"{record.traffic.first_ts or ''}/{record.traffic.last_ts or ''}",
                TAG_DRIFTED_COLUMNS: ",".join(drifted_columns or []),
                TAG_DRIFT_REPORT: report_url or "",
                TAG_PARENT_CHAMPION: champion["version"],
                TAG_ORIGINAL_RUN: history.run_id,
                TAG_LOOP_ID: loop_id,
            }
            | gate_tags,
            training_rows=window.training,
            frames={f"{GATE_ARTIFACT_DIR}/{GATE_HOLDOUT_FILE}": window.holdout},
            documents={
                f"{TRAINING_ARTIFACT_DIR}/{WINDOW_FILE}": record.as_dict(),
                f"{GATE_ARTIFACT_DIR}/{GATE_EVIDENCE_FILE}": evidence.as_dict()
                | {"passed": passed, "reason": why, "max_loss": settings.gate_max_loss, "latency_budget_ms": budget}
                | {
                    "candidate_predict_ms_1row": result.chosen_cost.single_row_ms,
                    "champion_predict_ms_1row": champion_ms,
                },
            },
        )
        version = registered["version"]
        tags = gate_tags | {TAG_LOOP_ID: loop_id}
        plan = None
        if passed:
            observed = score(champion_pipeline, fresh, settings.target)["accuracy"]
            baseline = planned_baseline(observed, settings)
            plan = plan_experiment(
                settings, champion_version=champion["version"], challenger_version=version, baseline=baseline,
                loop_id=loop_id, traffic=champion_traffic(settings),
            )  # fmt: skip
            tags |= plan_tags(plan)
        tag_version(model_name, version, tags)
        if plan is not None:
            with registry_lock(model_name, wait_seconds=settings.registry_lock_wait_seconds):
                # Both aliases as this run saw them when it started: a move meanwhile (a promotion, a rollback, a
                # manual control) makes the comparison stale, so the candidate stays registered but untested.
                from flows.lib.registry import moved_since

                seen = {CHAMPION: champion["version"], CHALLENGER: challenger["version"] if challenger else None}
                stale = moved_since(seen, current_aliases(model_name))
                if stale is not None:
                    return skip(
                        model_name, trigger, f"v{version} passed the gate but is not made {CHALLENGER}: {stale}"
                    )
                # The plan reaches the router before the alias, so the experiment has it from its first request.
                send_plan(settings, plan)
                set_alias(model_name, CHALLENGER, version, reason=f"passed the quality gate: {why}", loop_id=loop_id)
            print(
                f"experiment planned: baseline accuracy {plan.baseline:.3f}, MDE {plan.mde}, alpha {plan.alpha}, "
                f"power {plan.power}: {plan.min_samples_per_arm} labelled outcomes per arm "
                f"(single-look test: {plan.fixed_horizon_samples_per_arm}), at most {plan.max_duration_hours} h; "
                f"design effect {plan.design_effect:.2f} ({plan.design_effect_source}); {plan.feasibility}"
            )
            if not plan.feasible:
                report_infeasible(model_name, plan)
    print(f"v{version} ({result.model_id}) {'is the new ' + CHALLENGER if passed else 'failed the gate'}: {why}")
    if result.tuning is not None:
        print(f"tuning {result.tuning.model_id}: {result.tuning.reason}")
    for candidate in result.candidates:
        print(
            f"candidate {candidate.model_id}: CV F1 {candidate.cv_f1:.3f} on {candidate.trained_rows} rows, predict "
            f"{candidate.serving_cost.single_row_ms:.1f} ms CPU per row, "
            f"{candidate.serving_cost.batch_ms:.1f} ms per {candidate.serving_cost.batch_rows} rows"
            f"{'' if candidate.within_budget else ' (over the budget)'}"
        )

    create_markdown_artifact(
        key="retrain-summary",
        markdown=artifacts.retrain_summary(
            model_name=model_name,
            version=version,
            trigger=trigger,
            loop_id=loop_id,
            drift_share=drift_share,
            drifted_columns=drifted_columns or [],
            report_url=report_url,
            window=record,
            result=result,
            evidence=evidence,
            passed=passed,
            why=why,
            champion_ms=champion_ms,
            max_loss=settings.gate_max_loss,
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
            metrics={f"holdout_{k}": v for k, v in result.holdout_metrics.items()}
            | {k: v for k, v in gate_metrics(evidence).items() if "f1" in k},
            loop_id=loop_id,
        ).model_dump(mode="json"),
        version=version,
        run_id=registered["run_id"],
    )
    if not passed:
        rejected = events.RejectedPayload(
            model_name=model_name, version=version, run_id=registered["run_id"], reason=why, loop_id=loop_id
        )
        emit(events.MODEL_REJECTED, model_name, rejected.model_dump(mode="json"), version=version)
    return {
        "version": version,
        "run_id": registered["run_id"],
        "trigger": trigger,
        "best_model": result.model_id,
        "gate_passed": passed,
        "gate_reason": why,
        "gate": evidence.as_dict(),
        "window": record.as_dict(),
        "tuning": result.tuning.as_dict() if result.tuning else None,
        "scale": result.scale.as_dict() if result.scale else None,
        "holdout": result.holdout_metrics,
        "predict_ms_1row": result.serving_cost.single_row_ms,
        "champion_predict_ms_1row": champion_ms,
        "latency_budget_ms": budget,
        "loop_id": loop_id,
        "plan": msgspec.structs.asdict(plan) if plan else None,
    }


def gate_metrics(evidence: HoldoutComparison) -> dict[str, float]:
    """The gate's evidence as run metrics: both models on the holdout and the interval on their F1 difference."""
    metrics = {f"gate_candidate_{k}": v for k, v in evidence.candidate.items()}
    metrics |= {f"gate_champion_{k}": v for k, v in evidence.champion.items()}
    f1 = evidence.f1
    return metrics | {
        "gate_f1_difference": f1.difference,
        "gate_f1_difference_low": f1.low,
        "gate_f1_difference_high": f1.high,
        "gate_holdout_rows": float(f1.rows),
    }


def skip(model_name: str, trigger: str, reason: str) -> dict[str, str]:
    """End a run that trains nothing: say why in the log and in the run's artifact."""
    print(f"{trigger} retrain of {model_name} skipped: {reason}")
    create_markdown_artifact(
        key="retrain-summary", markdown=artifacts.retrain_skipped(model_name=model_name, trigger=trigger, reason=reason)
    )
    return {"skipped": reason, "trigger": trigger}
