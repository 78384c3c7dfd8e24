"""A/B evaluation flow: read the router's outcome counts, decide with peeking-safe statistics, and act.

Runs on a schedule, at once when the router reports the planned sample reached (automation), or by hand.
Every look is recorded: a JSON report (and a stable latest one), a Prefect table and markdown artifact, an MLflow
run with the metrics, the evidence and a plot of the metric per arm over time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from contracts import events
from contracts.api import INVALID, PROMOTE, ROLLBACK, ExperimentEnd, ExperimentPause, ExperimentPlan, Health, Outcomes
from contracts.decision import Decision, WatchPromise, WatchResult
from contracts.registry import CHALLENGER, CHAMPION
from flows.settings import FlowSettings, get_settings
from flows.tasks import (
    IO_RETRIES,
    connect_mlflow,
    current_aliases,
    emit,
    find_version,
    mlflow_run_url,
    new_id,
    registry_lock,
    report_startup,
    router,
    run_name,
)

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
def decide(outcomes: Outcomes, plan: ExperimentPlan, prior_latency_breaches: int) -> Decision:
    """Pause state, SRM, guardrails (non-inferiority), then the always-valid test of the primary metric."""
    from flows.lib import ab_policy

    evidence = ab_policy.evidence_from_outcomes(
        outcomes, plan, datetime.now(UTC), prior_latency_breaches=prior_latency_breaches
    )
    return ab_policy.decide(evidence)


@task(**IO)
def pause_at_router(settings: FlowSettings, challenger_version: str, reason: str) -> None:
    """Pause the experiment: the champion serves everyone, the challenger keeps its alias."""
    with router(settings) as client:
        client.pause_experiment(ExperimentPause(challenger_version=challenger_version, reason=reason[:2000]))


@task(**IO)
def keep_promise(model_name: str, promise: WatchPromise) -> None:
    """Tag the new champion with what the experiment promised (the post-promotion watch reads it)."""
    from contracts.registry import watch_tags
    from flows.lib import registry

    registry.tag_version(model_name, promise.version, watch_tags(promise))


@task(**IO)
def promise_of_champion(model_name: str) -> tuple[str, WatchPromise | None, str]:
    """The champion's version, the promise it is watched against (None: none), and its watch status."""
    from contracts.registry import TAG_WATCH_STATUS, watch_from_tags
    from flows.lib import registry

    version = registry.get_version(model_name, CHAMPION)
    if version is None:
        return "", None, ""
    return str(version.version), watch_from_tags(version.tags), version.tags.get(TAG_WATCH_STATUS, "")


@task(**IO)
def end_watch(model_name: str, version: str, status: str) -> None:
    """Record how the watch of a champion ended (`held`, or `regressed`)."""
    from contracts.registry import TAG_WATCH_STATUS
    from flows.lib import registry

    registry.tag_version(model_name, version, {TAG_WATCH_STATUS: status})


@task(**IO)
def watch_rollback(model_name: str, result: WatchResult, decision_id: str, loop_id: str) -> tuple[str, str]:
    """Move `champion` back to the version the watched one replaced, audited like every alias move."""
    from contracts.registry import REQUESTED_BY_LOOP
    from flows.lib import registry

    return registry.rollback_champion(
        model_name, reason=f"post-promotion watch: {result.reason}", requested_by=REQUESTED_BY_LOOP,
        to_version=result.previous_version, decision_id=decision_id, loop_id=loop_id,
    )  # fmt: skip


def watch_champion(settings: FlowSettings, model_name: str, outcomes: Outcomes) -> dict:
    """The post-promotion watch of the champion served alone: its accuracy since the promotion against its promise."""
    from flows.lib import ab_policy, artifacts

    version, promise, status = promise_of_champion(model_name)
    if promise is None or status != "watching" or version != outcomes.champion_version:
        return {"decision": "NO_EXPERIMENT", "router_challenger": "none", "watch": status or "none"}
    champion = outcomes.arm(CHAMPION)
    elapsed = (datetime.now(UTC) - promise.promoted_at).total_seconds() / 3600
    result = ab_policy.watch(promise, None if champion is None else champion.user_sums, elapsed)
    print(f"watch of v{version}: {result.verdict}: {result.reason}")
    create_markdown_artifact(key="ab-watch", markdown=artifacts.ab_watch(model_name, result))
    if result.verdict == "REGRESSION":
        decision_id = new_id()
        with registry_lock(model_name, wait_seconds=settings.registry_lock_wait_seconds):
            from flows.lib.registry import moved_since

            # Under the lock, just before the move: the watched version must still be the champion.
            stale = moved_since({CHAMPION: version}, current_aliases(model_name))
            if stale is not None:
                print(f"rollback after the watch not carried out: {stale}")
                return {"decision": "WATCH", "watch": result.to_dict(), "superseded": stale}
            before, after = watch_rollback(model_name, result, decision_id, promise.loop_id)
        end_watch(model_name, version, "regressed")
        with router(settings) as client:
            client.reload_models()
        payload = events.WatchPayload(
            model_name=model_name, version=before, previous_version=after, accuracy=result.accuracy,
            cs_upper=result.cs_upper, threshold=result.threshold, expected_accuracy=result.expected_accuracy,
            scored=result.scored, elapsed_hours=result.elapsed_hours, reason=result.reason, decision_id=decision_id,
            loop_id=promise.loop_id,
        ).model_dump(mode="json")  # fmt: skip
        emit(events.MODEL_WATCH_REGRESSED, model_name, payload, version=before)
    elif result.verdict == "DONE":
        end_watch(model_name, version, "held")
    return {"decision": "WATCH", "watch": result.to_dict()}


@task(**IO)
def record_look(
    decision: Decision,
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
    from flows.lib import artifacts, lineage

    markdown = artifacts.loop_chain(lineage.gather(model_name, loop_id, tracking_uri))
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
    if health.champion_version is None:
        print("skipped: the router serves no champion")
        return {"decision": "NO_EXPERIMENT", "router_challenger": "none"}
    if health.challenger_version is None:
        # No experiment: the champion may be under its post-promotion watch.
        outcomes = fetch_outcomes(settings)
        connect_mlflow(settings)
        result = watch_champion(settings, model_name, outcomes)
        if result["decision"] == "NO_EXPERIMENT":
            print(f"skipped: the router serves no experiment (champion {health.champion_version}), no watch")
        return result
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
    as_dict = decision.to_dict()
    where = record_look(
        decision, outcomes=outcomes, decision_id=decision_id, loop_id=plan.loop_id, model_name=model_name,
        reports_dir=settings.home / "reports", tracking_uri=settings.mlflow_tracking_uri,
    )  # fmt: skip
    print(f"{decision.decision}: {decision.reason}")
    print(f"what would change it: {decision.what_would_change}")

    ev, arms = as_dict["evidence"], as_dict["evidence"]["arms"]
    create_table_artifact(
        key="ab-look",
        table=[
            {"arm": arm, **{k: v for k, v in values.items() if k != "version"}, "version": values["version"]}
            for arm, values in arms.items()
        ],
        description=f"**{decision.decision}** ({decision.rule}): {decision.reason}",
    )
    from flows.lib import artifacts

    create_markdown_artifact(
        key="ab-summary",
        markdown=artifacts.ab_look(
            decision, model_name=model_name, experiment_id=outcomes.experiment_id, decision_id=decision_id,
            run_url=where["run_url"],
        ),
    )  # fmt: skip
    create_link_artifact(key="ab-look-run", link=where["run_url"], link_text="A/B look in MLflow (plot, report)")

    champion_arm, challenger_arm = arms[CHAMPION], arms[CHALLENGER]
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
    moved = {"reason": decision.reason, "decision_id": decision_id, "loop_id": plan.loop_id, "evidence": ev}
    if decision.decision not in (PROMOTE, ROLLBACK):
        emit(events.EXPERIMENT_DECIDED, model_name, payload, version=version)
        if decision.decision == INVALID and decision.rule != "paused":
            # Newly invalid: pause (the champion serves everyone, the challenger keeps its alias) until an operator
            # resumes or ends it; a paused experiment at its maximum duration is rolled back by `decide`.
            pause_at_router(settings, version, f"INVALID: {decision.reason}")
            emit(events.EXPERIMENT_INVALID, model_name, payload, version=version)
            emit(events.EXPERIMENT_PAUSED, model_name, payload, version=version)
    else:
        with registry_lock(model_name, wait_seconds=settings.registry_lock_wait_seconds):
            # Re-read both aliases under the lock: another look (or a control) may have acted since this one read.
            from flows.lib.registry import moved_since

            seen = {CHAMPION: outcomes.champion_version, CHALLENGER: version}
            stale = moved_since(seen, current_aliases(model_name))
            if stale is not None:
                print(f"{decision.decision} not carried out: {stale}")
                return as_dict | {"decision_id": decision_id, "superseded": stale} | where
            emit(events.EXPERIMENT_DECIDED, model_name, payload, version=version)
            if decision.decision == PROMOTE:
                from flows.lib import ab_policy

                promote(model_name, version, **moved)
                if plan.watch_hours > 0:
                    keep_promise(model_name, ab_policy.promise_of(decision, plan.watch_hours, datetime.now(UTC)))
                end = ExperimentEnd(challenger_version=version, decision=PROMOTE, reason=decision.reason)
                end_at_router(settings, end, split=None)
                emit(events.MODEL_PROMOTED, model_name, payload, version=version)
            else:
                roll_back(model_name, **moved)
                end = ExperimentEnd(challenger_version=version, decision=ROLLBACK, reason=decision.reason)
                end_at_router(settings, end, split=0.0)
                emit(events.MODEL_ROLLED_BACK, model_name, payload, version=version)
    if plan.loop_id:
        record_lineage(model_name, plan.loop_id, settings.mlflow_tracking_uri)
    from prefect.runtime import flow_run

    ids = {"decision_id": decision_id, "experiment_id": outcomes.experiment_id, "flow_run_id": flow_run.id}
    return as_dict | ids | where
