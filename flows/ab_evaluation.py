"""A/B evaluation flow: read the router's outcome counts, decide with peeking-safe statistics, and act.

Runs on a schedule, at once when the router reports the planned sample reached (automation), or by hand.
Every look is recorded: a JSON report (and a stable latest one), a Prefect table and markdown artifact, an MLflow
run with the metrics, the evidence and a plot of the metric per arm over time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from contracts import events
from contracts.api import ExperimentEnd, ExperimentPlan, Health, Outcomes
from contracts.registry import CHALLENGER
from flows.settings import FlowSettings, get_settings
from flows.tasks import (
    IO_RETRIES,
    connect_mlflow,
    emit,
    find_version,
    mlflow_run_url,
    new_id,
    report_startup,
    router,
    run_name,
)

if TYPE_CHECKING:
    from flows.lib import experiment

IO = IO_RETRIES


@task(**IO)
def router_health(settings: FlowSettings) -> Health:
    """What the router serves right now (cheap: no store or registry call)."""
    with router(settings) as client:
        return client.health()


@task(**IO)
def fetch_outcomes(settings: FlowSettings, bucket_seconds: int | None = None) -> Outcomes:
    """Outcome counts per arm of the router's current experiment, with its plan, start and latency buckets."""
    with router(settings) as client:
        return client.outcomes(bucket_seconds=bucket_seconds)


@task(**IO)
def plan_from_registry(model_name: str, version: str) -> ExperimentPlan | None:
    """The plan kept as tags on the challenger's version (used when the router lost it)."""
    from flows.lib import registry

    return registry.plan_of(model_name, version)


@task(**IO)
def latency_breach_streak(model_name: str, experiment_id: str) -> int:
    """Consecutive latest looks of this experiment whose latency guardrail saw a breach (from their MLflow runs)."""
    from flows.lib import ab_report

    return ab_report.latency_breach_streak(model_name, experiment_id)


@task
def decide(outcomes: Outcomes, plan: ExperimentPlan, prior_latency_breaches: int) -> experiment.Decision:
    """SRM check, guardrails, then the always-valid test of the primary metric."""
    from flows.lib import experiment

    evidence = experiment.evidence_from_outcomes(
        outcomes, plan, datetime.now(UTC), prior_latency_breaches=prior_latency_breaches
    )
    return experiment.decide(evidence)


@task(**IO)
def record_look(
    decision: experiment.Decision,
    *,
    outcomes: Outcomes,
    decision_id: str,
    loop_id: str,
    model_name: str,
    reports_dir: Path,
    tracking_uri: str,
) -> dict[str, str]:
    """Write the JSON report, plot the history of this experiment and log the look as an MLflow run."""
    from flows.lib import ab_report

    logged = ab_report.log_look(
        decision.to_dict(), experiment_id=outcomes.experiment_id, decision_id=decision_id, loop_id=loop_id,
        model_name=model_name, reports_dir=reports_dir,
    )  # fmt: skip
    run_url = mlflow_run_url(tracking_uri, logged.pop("mlflow_experiment_id"), logged.pop("run_id"))
    return logged | {"run_url": run_url}


@task(**IO)
def record_lineage(model_name: str, loop_id: str, tracking_uri: str) -> str:
    """The loop's whole chain so far as a markdown artifact (drift, retrain, version, plan, looks, moves)."""
    from flows.lib import lineage

    markdown = lineage.gather(model_name, loop_id, tracking_uri).markdown()
    create_markdown_artifact(key="loop-lineage", markdown=markdown, description=f"loop {loop_id}")
    return markdown


@task(**IO)
def promote(model_name: str, version: str, *, reason: str, decision_id: str, loop_id: str, evidence: dict) -> None:
    """Move `champion` to the challenger in one alias write, keep the old one tagged, drop `challenger`."""
    from flows.lib import registry

    registry.promote(model_name, version, reason=reason, decision_id=decision_id, loop_id=loop_id, evidence=evidence)


@task(**IO)
def roll_back(model_name: str, *, reason: str, decision_id: str, loop_id: str, evidence: dict) -> None:
    """Stop serving the challenger: drop its alias (recorded with the decision)."""
    from flows.lib import registry

    registry.retire_challenger(model_name, reason=reason, decision_id=decision_id, loop_id=loop_id, evidence=evidence)


@task(**IO)
def end_at_router(settings: FlowSettings, end: ExperimentEnd, *, split: float | None) -> None:
    """End the experiment at the router (it reloads the aliases at once); after a rollback, set the split."""
    with router(settings) as client:
        if split is not None:
            client.set_split(split)
        client.end_experiment(end)


@flow(name="ab-evaluation", flow_run_name=run_name("ab-evaluation"), log_prints=True)
def ab_evaluation(model_name: str | None = None) -> dict:
    """Evaluate the running experiment once and act on the decision.

    Args:
        model_name: Registered model (default from settings).

    Returns:
        The decision with its evidence, or why there was nothing to evaluate.
    """
    report_startup("ab-evaluation")
    settings = get_settings()
    model_name = model_name or settings.model_name
    # The router first: without a challenger there is nothing to evaluate, and MLflow need not even be imported.
    health = router_health(settings)
    if health.champion_version is None or health.challenger_version is None:
        print(f"skipped: the router serves no experiment (champion {health.champion_version}, challenger "
              f"{health.challenger_version})")  # fmt: skip
        return {"decision": "NO_EXPERIMENT", "router_challenger": "none"}
    outcomes = fetch_outcomes(settings)
    if outcomes.challenger_version is None:
        print(f"skipped: the router serves no challenger (experiment {outcomes.experiment_id})")
        return {"decision": "NO_EXPERIMENT", "router_challenger": "none"}

    connect_mlflow(settings)
    challenger = find_version(model_name, CHALLENGER)
    if challenger is None or outcomes.challenger_version != challenger["version"]:
        registered = challenger["version"] if challenger else "none"
        serving = outcomes.challenger_version or "none"
        print(f"no experiment to evaluate (registry challenger {registered}, router serving {serving})")
        return {"decision": "NO_EXPERIMENT", "registry_challenger": registered, "router_challenger": serving}
    version = challenger["version"]
    plan = outcomes.plan or plan_from_registry(model_name, version)
    if plan is None:
        raise RuntimeError(f"{model_name} v{version} is under test without a plan (no router plan, no plan tags)")
    if outcomes.bucket_seconds != plan.guardrail_latency_bucket_seconds:
        outcomes = fetch_outcomes(settings, plan.guardrail_latency_bucket_seconds)

    decision = decide(outcomes, plan, latency_breach_streak(model_name, outcomes.experiment_id))
    decision_id = new_id()
    where = record_look(
        decision, outcomes=outcomes, decision_id=decision_id, loop_id=plan.loop_id, model_name=model_name,
        reports_dir=settings.home / "reports", tracking_uri=settings.mlflow_tracking_uri,
    )  # fmt: skip
    print(f"{decision.decision}: {decision.reason}")

    ev, arms = decision.evidence, decision.evidence["arms"]
    create_table_artifact(
        key="ab-look",
        table=[
            {"arm": arm, **{k: v for k, v in values.items() if k != "version"}, "version": values["version"]}
            for arm, values in arms.items()
        ],
        description=f"**{decision.decision}** ({ev['rule']}): {decision.reason}",
    )
    from flows.lib import ab_report

    primary, plain_p = ab_report.primary_numbers(ev), ab_report.nan_if_none(ev["plain_chi2"]["p_value"])
    guardrails = "\n".join(f"- {'holds' if g['holds'] else '**breached**'}: {g['detail']}" for g in ev["guardrails"])
    create_markdown_artifact(
        key="ab-summary",
        markdown=(
            f"# A/B look: {model_name} {outcomes.experiment_id}\n\n**{decision.decision}**: {decision.reason}\n\n"
            f"- lift {primary['d_hat']:+.4f}, 95% always-valid CS [{primary['cs_lower']:+.4f}, "
            f"{primary['cs_upper']:+.4f}], always-valid p {primary['always_valid_p']:.3g} (NaN: too few labels yet)\n"
            f"- plain chi-squared p {plain_p:.3g} (not peeking-safe, for reference)\n"
            f"- SRM p: all traffic {ev['srm']['all_traffic']['p_value']}, labelled {ev['srm']['labelled']['p_value']}"
            f" (threshold {plan.srm_threshold})\n"
            f"- samples {ev['samples']['labelled_per_arm']} of {plan.min_samples_per_arm} planned per arm; "
            f"elapsed {ev['elapsed_hours']} h of {plan.max_duration_hours}\n\n**Guardrails**\n\n{guardrails}\n\n"
            f"decision `{decision_id}`, loop `{plan.loop_id}`; [MLflow run with plot and report]({where['run_url']})"
        ),
    )
    create_link_artifact(key="ab-look-run", link=where["run_url"], link_text="A/B look in MLflow (plot, report)")

    champion_arm, challenger_arm = arms["champion"], arms["challenger"]
    payload = events.DecisionPayload(
        model_name=model_name,
        decision_id=decision_id,
        loop_id=plan.loop_id,
        experiment_id=outcomes.experiment_id,
        decision=decision.decision,
        champion_version=outcomes.champion_version,
        challenger_version=version,
        p_value=ev["primary"]["always_valid_p"] if ev["primary"] else None,
        reason=decision.reason,
        champion_labelled=champion_arm["labelled"],
        champion_correct=champion_arm["correct"],
        challenger_labelled=challenger_arm["labelled"],
        challenger_correct=challenger_arm["correct"],
        report_url=where["run_url"],
    ).model_dump(mode="json")
    emit(events.EXPERIMENT_DECIDED, model_name, payload, version=version)
    moved = {"reason": decision.reason, "decision_id": decision_id, "loop_id": plan.loop_id, "evidence": ev}
    if decision.decision == "PROMOTE":
        promote(model_name, version, **moved)
        end_at_router(settings, ExperimentEnd(challenger_version=version, decision="PROMOTE", reason=decision.reason),
                      split=None)  # fmt: skip
        emit(events.MODEL_PROMOTED, model_name, payload, version=version)
    elif decision.decision == "ROLLBACK":
        roll_back(model_name, **moved)
        end_at_router(settings, ExperimentEnd(challenger_version=version, decision="ROLLBACK", reason=decision.reason),
                      split=0.0)  # fmt: skip
        emit(events.MODEL_ROLLED_BACK, model_name, payload, version=version)
    elif decision.decision == "INVALID":
        emit(events.EXPERIMENT_INVALID, model_name, payload, version=version)
    if plan.loop_id:
        record_lineage(model_name, plan.loop_id, settings.mlflow_tracking_uri)
    from prefect.runtime import flow_run

    ids = {"decision_id": decision_id, "experiment_id": outcomes.experiment_id, "flow_run_id": flow_run.id}
    return decision.to_dict() | ids | where
