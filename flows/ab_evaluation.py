"""A/B evaluation flow: read the router's outcome counts, test them, and promote, roll back or wait."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from contracts import events
from contracts.registry import CHALLENGER, TAG_DECISION
from flows.lib import ab, registry
from flows.lib.router import RouterClient
from flows.settings import FlowSettings, get_settings
from flows.tasks import connect_mlflow, emit, find_version, run_name, tag_version


@task(retries=3, retry_delay_seconds=[2, 5, 10])
def fetch_outcomes(settings: FlowSettings):
    """Outcome counts per arm of the router's current experiment."""
    with RouterClient(settings.router_url, timeout=settings.http_timeout_seconds) as router:
        return router.outcomes()


@task
def decide(outcomes, alpha: float, min_samples_per_arm: int) -> ab.AbResult:
    """Test correct vs incorrect per arm and turn the result into a decision."""
    return ab.decide(outcomes, alpha=alpha, min_samples_per_arm=min_samples_per_arm)


@task(retries=3, retry_delay_seconds=[2, 5, 10])
def promote(model_name: str, version: str, reason: str) -> str | None:
    """Move `champion` to the challenger (one alias write) and drop `challenger`."""
    return registry.promote(model_name, version, reason=reason)


@task(retries=3, retry_delay_seconds=[2, 5, 10])
def roll_back(model_name: str, version: str) -> None:
    """Stop serving the challenger: drop its alias."""
    registry.delete_alias(model_name, CHALLENGER)


@task(retries=3, retry_delay_seconds=[2, 5, 10])
def reload_router(settings: FlowSettings) -> None:
    """Make the router pick up the alias move now rather than at its next refresh."""
    with RouterClient(settings.router_url, timeout=settings.http_timeout_seconds) as router:
        router.reload_models()


@flow(name="ab-evaluation", flow_run_name=run_name("ab-evaluation"), log_prints=True)
def ab_evaluation(
    model_name: str | None = None, alpha: float | None = None, min_samples_per_arm: int | None = None
) -> dict:
    """Evaluate the running experiment once and act on the decision.

    Args:
        model_name: Registered model (default from settings).
        alpha: Significance level (default from settings).
        min_samples_per_arm: Labelled outcomes per arm needed before deciding (default from settings).

    Returns:
        The decision with its evidence.
    """
    settings = get_settings()
    model_name = model_name or settings.model_name
    alpha = settings.ab_alpha if alpha is None else alpha
    min_samples_per_arm = min_samples_per_arm or settings.ab_min_samples_per_arm
    connect_mlflow(settings)

    outcomes = fetch_outcomes(settings)
    challenger = find_version(model_name, CHALLENGER)
    if challenger is None or outcomes.challenger_version != challenger["version"]:
        serving = outcomes.challenger_version or "none"
        registered = challenger["version"] if challenger else "none"
        print(f"no experiment to evaluate (registry challenger {registered}, router serving {serving})")
        return {"decision": "NO_EXPERIMENT", "registry_challenger": registered, "router_challenger": serving}

    result = decide(outcomes, alpha, min_samples_per_arm)
    create_table_artifact(
        key="ab-evaluation",
        table=[
            {
                "arm": name,
                "version": arm.version,
                "labelled": arm.labelled,
                "correct": arm.correct,
                "accuracy": round(arm.accuracy, 4),
            }
            for name, arm in (("champion", result.champion), ("challenger", result.challenger))
            if arm is not None
        ],
        description=f"**{result.decision}**: {result.reason}",
    )
    print(f"{result.decision}: {result.reason}")
    version = challenger["version"]
    payload = events.DecisionPayload(
        model_name=model_name,
        decision=result.decision,
        champion_version=outcomes.champion_version,
        challenger_version=version,
        p_value=result.p_value,
        reason=result.reason,
        champion_labelled=result.champion.labelled if result.champion else 0,
        champion_correct=result.champion.correct if result.champion else 0,
        challenger_labelled=result.challenger.labelled if result.challenger else 0,
        challenger_correct=result.challenger.correct if result.challenger else 0,
    ).model_dump(mode="json")
    emit(events.EXPERIMENT_DECIDED, model_name, payload, version=version)
    if result.decision == "PROMOTE":
        promote(model_name, version, result.reason)
        reload_router(settings)
        emit(events.MODEL_PROMOTED, model_name, payload, version=version)
    elif result.decision == "ROLLBACK":
        roll_back(model_name, version)
        tag_version(model_name, version, {TAG_DECISION: f"ROLLBACK: {result.reason}"})
        reload_router(settings)
        emit(events.MODEL_ROLLED_BACK, model_name, payload, version=version)
    return result.as_dict() | {"experiment_id": outcomes.experiment_id}
