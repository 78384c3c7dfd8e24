"""Plans that can be met: the sample size with the users' design effect, a relative MDE, and a feasibility check
against the maximum duration at the request and label rates the router sees."""

from __future__ import annotations

from dataclasses import dataclass

from contracts.api import ArmOutcome, ExperimentPlan
from flows.lib.ab_stats import absolute_mde, design_effect_of, plan_sample_size

MIN_USERS_FOR_DESIGN_EFFECT = 30
"""Users with a scored request the champion needs before its traffic's design effect is trusted."""
CEILING_HEADROOM = 0.005
"""How far below 100% accuracy the champion's level plus the planned lift must stay (a lift to exactly 1.0 has no
variance left to plan with)."""


def plannable_baseline(observed: float, *, mde: float, relative: bool) -> float:
    """The champion's accuracy the experiment is planned against: the observed one, unless a lift of `mde` on it
    would not fit under 100% (a champion already near perfect), then the highest baseline where it fits."""
    lift = absolute_mde(observed, mde, relative=relative)
    return min(observed, 1.0 - lift - CEILING_HEADROOM)


@dataclass(frozen=True)
class PlanInputs:
    """What the plan is made from (the flows' settings, and the champion's level)."""

    champion_version: str
    challenger_version: str
    baseline: float
    alpha: float
    power: float
    mde: float
    mde_relative: bool
    ab_split_b: float
    max_duration_hours: float
    srm_threshold: float
    guardrail_error_margin: float
    guardrail_error_margin_relative: float
    guardrail_latency_margin: float
    guardrail_latency_slack_ms: float
    watch_hours: float
    loop_id: str = ""


@dataclass(frozen=True)
class Rates:
    """The champion's recent traffic: requests per hour, and scored (labelled or failed) outcomes per request."""

    requests_per_hour: float
    scored_per_request: float
    hours: float
    """How long a span the rates were measured over."""


def rates_of(champion: ArmOutcome | None) -> Rates | None:
    """Request and scoring rates of the champion's traffic (None without two distinct request times)."""
    if champion is None or champion.first_request_at is None or champion.last_request_at is None:
        return None
    hours = (champion.last_request_at - champion.first_request_at).total_seconds() / 3600
    assigned = champion.requests + champion.errors
    if hours <= 0 or assigned < 2:
        return None
    scored = champion.user_sums.sum_n if champion.user_sums is not None else champion.labelled + champion.errors
    return Rates(requests_per_hour=assigned / hours, scored_per_request=scored / assigned, hours=hours)


def make_plan(inputs: PlanInputs, champion_traffic: ArmOutcome | None) -> ExperimentPlan:
    """The plan of an experiment: sample sizes inflated by the design effect of the champion's recent traffic, and
    whether they fit in the maximum duration at its rates (recorded; an infeasible plan is reported at once).

    Args:
        inputs: Settings and the champion's accuracy.
        champion_traffic: The champion's arm of the router's current outcomes (None: unknown).

    Returns:
        The plan, with `design_effect`, `feasible`, `expected_hours` and `feasibility` filled in.

    Raises:
        ValueError: No lift of that size fits under 100% accuracy (say so rather than plan for nothing).
    """
    mde = absolute_mde(inputs.baseline, inputs.mde, relative=inputs.mde_relative)
    if inputs.baseline + mde > 1.0:
        raise ValueError(
            f"a lift of {mde:.4f} over a champion at {inputs.baseline:.4f} does not fit under 100% accuracy: "
            "plan a smaller (or relative) MDE"
        )
    deff = design_effect_of(
        None if champion_traffic is None else champion_traffic.user_sums, minimum_users=MIN_USERS_FOR_DESIGN_EFFECT
    )
    if deff is None:
        applied, source = (
            1.0,
            (f"none applied: fewer than {MIN_USERS_FOR_DESIGN_EFFECT} users of the champion's traffic to estimate it"),
        )
    else:
        applied = max(1.0, deff)
        sums = champion_traffic.user_sums if champion_traffic is not None else None
        users = sums.users if sums is not None else 0
        source = (
            f"{deff:.2f} estimated from the champion's recent traffic ({users} users, cluster-robust variance over the "
            "independent-requests one)" + ("" if deff >= 1 else "; below 1, so 1 applied (the conservative side)")
        )
    sequential, fixed = plan_sample_size(
        baseline=inputs.baseline, mde=mde, alpha=inputs.alpha, power=inputs.power, design_effect=applied
    )
    feasible, hours, feasibility = True, 0.0, "request rate unknown (no recent traffic of the champion): not checked"
    rates = rates_of(champion_traffic)
    if rates is not None and rates.requests_per_hour * rates.scored_per_request > 0:
        share = min(inputs.ab_split_b, 1 - inputs.ab_split_b)
        per_hour = rates.requests_per_hour * rates.scored_per_request * share
        hours = sequential / per_hour if per_hour > 0 else float("inf")
        feasible = hours <= inputs.max_duration_hours
        feasibility = (
            f"{sequential} scored outcomes per arm at {rates.requests_per_hour:.1f} requests/h, "
            f"{rates.scored_per_request:.1%} of them labelled or failed, {share:.0%} of users on the smaller arm: "
            f"about {hours:.1f} h, {'within' if feasible else 'OVER'} the maximum of {inputs.max_duration_hours:g} h "
            f"(rates measured over {rates.hours:.2f} h)"
        )
    elif rates is not None:
        feasible, feasibility = False, "the champion's recent traffic has no labelled or failed request: no outcome"
    return ExperimentPlan(
        champion_version=inputs.champion_version,
        challenger_version=inputs.challenger_version,
        alpha=inputs.alpha,
        power=inputs.power,
        mde=mde,
        baseline=inputs.baseline,
        min_samples_per_arm=sequential,
        fixed_horizon_samples_per_arm=fixed,
        ab_split_b=inputs.ab_split_b,
        max_duration_hours=inputs.max_duration_hours,
        srm_threshold=inputs.srm_threshold,
        guardrail_error_margin=inputs.guardrail_error_margin,
        guardrail_error_margin_relative=inputs.guardrail_error_margin_relative,
        guardrail_latency_margin=inputs.guardrail_latency_margin,
        guardrail_latency_slack_ms=inputs.guardrail_latency_slack_ms,
        loop_id=inputs.loop_id,
        mde_relative=inputs.mde if inputs.mde_relative else 0.0,
        design_effect=applied,
        design_effect_source=source[:500],
        feasible=feasible,
        expected_hours=hours if hours != float("inf") else 0.0,
        feasibility=feasibility[:1000],
        watch_hours=inputs.watch_hours,
    )
