"""The A/B decision policy: which rule fires at a look, in which order, and the post-promotion watch.

The statistics are `flows.lib.ab_stats`; the decision is the typed `contracts.decision.Decision`. Everything is a
pure function of the router's counts, so the flow, the unit tests and the simulation benchmark
(`bench/ab_simulation.py`) all decide through `decide()` and `watch()`.

The primary metric is the accuracy over scored requests: labelled answered requests plus failed ones, a failed
prediction counting as a miss (it needs no label to be wrong). A challenger that fails on the hard inputs cannot
look more accurate by leaving them out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from scipy.stats import binomtest

from contracts.api import (
    CONTINUE,
    INVALID,
    PROMOTE,
    ROLLBACK,
    ArmOutcome,
    ExperimentPlan,
    LatencyBucket,
    Outcomes,
    UserSums,
)
from contracts.decision import (
    ArmSummary,
    Decision,
    DecisionEvidence,
    DecisionName,
    Guardrail,
    PlainChi2,
    PrimaryTest,
    Rule,
    Samples,
    SrmCheck,
    SrmEvidence,
    WatchResult,
)
from contracts.decision import (
    WatchPromise as Promise,
)
from contracts.registry import CHALLENGER, CHAMPION
from flows.lib.ab_stats import (
    SequentialResult,
    arm_metrics,
    independent_sums,
    one_sided_upper,
    plain_chi2,
    proportion_difference_test,
    ratio_difference_test,
    ratio_stats,
    srm_levels,
    srm_test,
)

MIN_LABELLED_PER_ARM = 10
"""No verdict on the primary metric before both arms have this many scored outcomes (the CS is asymptotic)."""
MIN_BUCKET_REQUESTS = 5
"""Answered requests per arm in a time bucket before the latency guardrail compares the arms in it."""
MIN_MATCHED_BUCKETS = 5
"""Time buckets with both arms compared before the latency guardrail can be breached."""
MIN_ERROR_TAU = 0.002
"""Smallest mixing scale of the error-rate confidence sequence (its scale is the margin)."""
WATCH_KEPT_SHARE = 0.8
"""The share of the lift the experiment estimated that a new champion must keep: its promise is the previous
champion's estimated level plus this share of the estimated lift (less `WATCH_TOLERANCE_SE` standard errors).
A promotion is selected for a high estimate (the winner's curse), true winners promoted early too, so the whole
estimate less half a standard error (the former promise) rolled back 12-16% of true winners at the MDE while it
restored 72% of lucky promotions in 72 h (600 and 300 simulated promotions; bench/ab_simulation.py measures both)."""
WATCH_TOLERANCE_SE = 0.0
"""Standard errors of the experiment's estimate subtracted from the promise (0: the kept share is the tolerance)."""
WATCH_TAU_SE = 2.0
"""Mixing scale of the watch's confidence sequence, in standard errors of the experiment's estimate: the size of the
shortfall it is most sensitive to (the plan's MDE, its former scale, is several times larger than a lucky
promotion's excess)."""


# --- evidence -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmEvidence:
    """The counts of one arm that the decision uses."""

    version: str
    requests: int
    """Answered requests."""
    errors: int
    labelled: int
    correct: int
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    confusion: tuple[tuple[str, str, int], ...] = ()
    users: int | None = None
    """Distinct users assigned (None: one request per user)."""
    labelled_users: int | None = None
    user_sums: UserSums | None = None
    """Per-user sums of scored requests (None: treated as one request per user)."""

    @property
    def assigned(self) -> int:
        """Requests assigned to this arm: answered plus failed."""
        return self.requests + self.errors

    @property
    def scored(self) -> int:
        """The primary metric's denominator: labelled answered requests plus failed ones."""
        return self.user_sums.sum_n if self.user_sums is not None else self.labelled + self.errors

    @property
    def sums(self) -> UserSums:
        """The per-user sums, or those of independent requests when the router reports none."""
        return self.user_sums if self.user_sums is not None else independent_sums(self.scored, self.correct)

    @property
    def assigned_units(self) -> int:
        """Users assigned (or, without user counts, requests)."""
        return self.assigned if self.users is None else self.users

    @property
    def labelled_units(self) -> int:
        """Users with a label (or, without user counts, labelled requests)."""
        return self.labelled if self.labelled_users is None else self.labelled_users

    @classmethod
    def from_outcome(cls, outcome: ArmOutcome | None, version: str) -> ArmEvidence:
        """The evidence of an arm the router reported (an arm that served nothing has zero counts)."""
        if outcome is None:
            return cls(version=version, requests=0, errors=0, labelled=0, correct=0)
        return cls(
            version=outcome.model_version,
            requests=outcome.requests,
            errors=outcome.errors,
            labelled=outcome.labelled,
            correct=outcome.correct,
            latency_p50_ms=outcome.latency_p50_ms,
            latency_p95_ms=outcome.latency_p95_ms,
            confusion=tuple((str(c.label), str(c.prediction), int(c.count)) for c in outcome.confusion),
            users=outcome.users or None,
            labelled_users=outcome.labelled_users or None,
            user_sums=outcome.user_sums,
        )


@dataclass(frozen=True)
class BucketLatency:
    """One arm's latency within one time bucket, as the router reports it."""

    start: datetime
    arm: str
    requests: int
    p95_ms: float
    compute_ms: float | None = None

    @classmethod
    def from_contract(cls, bucket: LatencyBucket) -> BucketLatency:
        """From the router's `LatencyBucket`."""
        return cls(bucket.start, bucket.arm, bucket.requests, bucket.latency_p95_ms, bucket.compute_ms_median)


@dataclass(frozen=True)
class Evidence:
    """Everything `decide()` looks at: per-arm counts, the plan, how long it ran, and whether it is paused."""

    champion: ArmEvidence
    challenger: ArmEvidence
    plan: ExperimentPlan
    elapsed_hours: float | None
    tau: float | None = None
    """Mixing standard deviation of the primary test (None: the plan's mde)."""
    latency_buckets: tuple[BucketLatency, ...] = ()
    prior_latency_breaches: int = 0
    paused: bool = False
    """The router has paused the experiment (after an INVALID look, or by hand)."""
    srm_overridden: bool = False
    """An operator resumed it after a pause: a sample ratio mismatch is reported, not acted on."""


def evidence_from_outcomes(
    outcomes: Outcomes, plan: ExperimentPlan, now: datetime, *, prior_latency_breaches: int = 0
) -> Evidence:
    """Build the evidence from the router's outcome counts, the experiment's plan and the current time."""
    elapsed = None
    if outcomes.started_at is not None:
        elapsed = (_utc(now) - _utc(outcomes.started_at)).total_seconds() / 3600
    return Evidence(
        champion=ArmEvidence.from_outcome(outcomes.arm(CHAMPION), plan.champion_version),
        challenger=ArmEvidence.from_outcome(outcomes.arm(CHALLENGER), plan.challenger_version),
        plan=plan,
        elapsed_hours=elapsed,
        latency_buckets=tuple(BucketLatency.from_contract(b) for b in outcomes.latency_buckets),
        prior_latency_breaches=prior_latency_breaches,
        paused=outcomes.paused_at is not None,
        srm_overridden=outcomes.resumed_at is not None,
    )


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


# --- guardrails ---------------------------------------------------------------------------------------------------


def error_margin(champion_rate: float, plan: ExperimentPlan) -> float:
    """The tolerated increase of the error rate: relative x the champion's rate + absolute."""
    return plan.guardrail_error_margin_relative * champion_rate + plan.guardrail_error_margin


def error_guardrail(a: ArmEvidence, b: ArmEvidence, plan: ExperimentPlan) -> Guardrail:
    """Error-rate non-inferiority: shown once the always-valid CS of err_b - err_a lies below the margin; breached
    (proven worse) once it lies above it.

    Error rate = failed / assigned requests. The margin has a relative part (a share of the champion's rate) and an
    absolute part, so a champion that almost never fails does not leave a margin of nothing.
    """
    if min(a.assigned, b.assigned) < 1:
        margin = plan.guardrail_error_margin
        return Guardrail(
            name="error_rate", holds=True, shown=False, detail="not enough data (an arm has no request yet)",
            values={"margin": margin},
        )  # fmt: skip
    rate_a, rate_b = a.errors / a.assigned, b.errors / b.assigned
    margin = error_margin(rate_a, plan)
    tau = max(margin, MIN_ERROR_TAU)
    test = proportion_difference_test(a.assigned, a.errors, b.assigned, b.errors, alpha=plan.alpha, tau=tau)
    values = {
        "champion_error_rate": rate_a,
        "challenger_error_rate": rate_b,
        "diff": test.d_hat,
        "cs_lower": test.lower,
        "cs_upper": test.upper,
        "margin": margin,
        "tau": tau,
    }
    rates = f"error rate {rate_b:.4f} vs champion {rate_a:.4f}"
    span = f"CS of the difference [{test.lower:+.4f}, {test.upper:+.4f}]"
    if test.lower > margin:
        return Guardrail(
            name="error_rate", holds=False, shown=False, detail=f"BREACHED: {rates}, {span} above the margin "
            f"{margin:.4f}", values=values,
        )  # fmt: skip
    shown = test.upper < margin
    state = "non-inferiority shown" if shown else "non-inferiority not shown yet"
    return Guardrail(
        name="error_rate", holds=True, shown=shown, detail=f"{state}: {rates}, {span}, margin {margin:.4f}",
        values=values,
    )  # fmt: skip


def matched_buckets(buckets: Iterable[BucketLatency]) -> list[tuple[BucketLatency, BucketLatency]]:
    """(champion, challenger) pairs of the time buckets in which both arms answered `MIN_BUCKET_REQUESTS`."""
    by_start: dict[datetime, dict[str, BucketLatency]] = {}
    for bucket in buckets:
        if bucket.requests >= MIN_BUCKET_REQUESTS:
            by_start.setdefault(bucket.start, {})[bucket.arm] = bucket
    return [
        (arms[CHAMPION], arms[CHALLENGER])
        for _, arms in sorted(by_start.items())
        if CHAMPION in arms and CHALLENGER in arms
    ]


def latency_guardrail(
    buckets: Iterable[BucketLatency],
    *,
    margin: float,
    slack_ms: float,
    alpha: float,
    looks_needed: int = 1,
    prior_breaches: int = 0,
) -> Guardrail:
    """p95 latency guardrail: the challenger is slower than the champion's p95 x (1 + margin) + slack in most time
    buckets (a one-sided sign test at `alpha`), its model costs more than `slack_ms` extra CPU per request, and this
    held at `looks_needed` consecutive looks. Arms are compared bucket by bucket, so load that comes and goes cancels.

    Returns:
        holds=False once the breach has persisted; `values["breached_now"]` says whether this look saw one.
    """
    pairs = matched_buckets(buckets)
    values: dict = {
        "matched_buckets": len(pairs),
        "margin": margin,
        "slack_ms": slack_ms,
        "looks_needed": looks_needed,
        "prior_breaches": prior_breaches,
        "breached_now": False,
    }
    if len(pairs) < MIN_MATCHED_BUCKETS:
        detail = (
            f"not enough data ({len(pairs)} time buckets with {MIN_BUCKET_REQUESTS} answered requests per arm, "
            f"needs {MIN_MATCHED_BUCKETS})"
        )
        return Guardrail(name="latency_p95", holds=True, detail=detail, values=values)
    over = sum(b.p95_ms > a.p95_ms * (1 + margin) + slack_ms for a, b in pairs)
    sign_p = float(binomtest(over, len(pairs), 0.5, alternative="greater").pvalue)
    excess = [b.compute_ms - a.compute_ms for a, b in pairs if a.compute_ms is not None and b.compute_ms is not None]
    compute_excess = float(np.median(excess)) if excess else None
    champion_p95 = float(np.median([a.p95_ms for a, _ in pairs]))
    challenger_p95 = float(np.median([b.p95_ms for _, b in pairs]))
    slower = sign_p < alpha
    costlier = compute_excess is None or compute_excess > slack_ms
    breached_now = slower and costlier
    streak = prior_breaches + 1 if breached_now else 0
    values |= {
        "buckets_over_limit": over,
        "sign_test_p": sign_p,
        "champion_p95_ms": champion_p95,
        "challenger_p95_ms": challenger_p95,
        "compute_excess_ms": compute_excess,
        "breached_now": breached_now,
        "streak": streak,
    }
    compute = "not measured" if compute_excess is None else f"{compute_excess:+.1f} ms CPU per request"
    text = (
        f"challenger p95 over {1 + margin:g} x champion's + {slack_ms:g} ms in {over} of {len(pairs)} time buckets "
        f"(sign test p={sign_p:.3g}, median p95 {challenger_p95:.1f} vs {champion_p95:.1f} ms), model cost {compute}"
    )
    if breached_now and streak >= looks_needed:
        detail = f"BREACHED at {streak} consecutive looks: {text}"
        return Guardrail(name="latency_p95", holds=False, shown=False, detail=detail, values=values)
    if breached_now:
        detail = f"breach seen at {streak} of {looks_needed} looks needed, not yet acted on: {text}"
        return Guardrail(name="latency_p95", holds=True, shown=False, detail=detail, values=values)
    why = "" if slower else "not slower in most buckets"
    if slower and not costlier:
        why = f"slower under load, but the model costs no more than the {slack_ms:g} ms floor"
    return Guardrail(name="latency_p95", holds=True, detail=f"holds ({why}): {text}", values=values)


# --- the decision -------------------------------------------------------------------------------------------------


def decide(evidence: Evidence, *, reference_test: bool = True) -> Decision:
    """Decide on one look at the cumulative counts; safe to call at every look.

    In order:
      1. paused, or a sample ratio mismatch, at the maximum duration -> ROLLBACK (an untrustworthy experiment
         must not hold traffic forever);
      2. paused -> INVALID (rule `paused`: it stays paused until an operator resumes or ends it);
      3. an always-valid sample ratio mismatch on users -> INVALID (the flow pauses the experiment);
      4. a guardrail breach proven (error rate above its margin; p95 latency at the plan's number of looks)
         -> ROLLBACK;
      5. a sample ratio mismatch on labelled users -> INVALID;
      6. the accuracy lift's confidence sequence entirely above 0 -> PROMOTE, once every guardrail shows
         non-inferiority (CONTINUE while one has not, or a latency breach awaits confirmation);
         entirely below 0 -> ROLLBACK;
      7. the maximum duration reached -> ROLLBACK; otherwise CONTINUE.
    After an operator resumed a paused experiment, a sample ratio mismatch is reported but not acted on.

    Args:
        evidence: Counts per arm, the plan, the elapsed time and the pause state.
        reference_test: Compute the plain chi-squared p-value for the record (it never decides; the simulations
            skip it, it is most of the cost of a look).

    Returns:
        The typed decision with every number it rests on.
    """
    plan, a, b = evidence.plan, evidence.champion, evidence.challenger
    tau = plan.mde if evidence.tau is None else evidence.tau
    # The plan's level holds over both tests together (`srm_levels` splits it), not for each.
    level_all, level_labelled = srm_levels(plan.srm_threshold)
    srm_all = srm_test((a.assigned_units, b.assigned_units), plan.ab_split_b, level_all)
    srm_labelled = srm_test((a.labelled_units, b.labelled_units), plan.ab_split_b, level_labelled)
    guardrails = [
        error_guardrail(a, b, plan),
        latency_guardrail(
            evidence.latency_buckets,
            margin=plan.guardrail_latency_margin,
            slack_ms=plan.guardrail_latency_slack_ms,
            alpha=plan.alpha,
            looks_needed=plan.guardrail_latency_looks,
            prior_breaches=evidence.prior_latency_breaches,
        ),
    ]
    enough = min(a.scored, b.scored) >= MIN_LABELLED_PER_ARM
    test = ratio_difference_test(a.sums, b.sums, alpha=plan.alpha, tau=tau)[0] if enough else None
    timed_out = evidence.elapsed_hours is not None and evidence.elapsed_hours >= plan.max_duration_hours
    act_on_srm = not evidence.srm_overridden
    summary = _summary(a, b, test, plan)

    def verdict(decision: DecisionName, rule: Rule, reason: str, change: str) -> Decision:
        record = _evidence(evidence, tau, srm_all, srm_labelled, guardrails, test, rule, reference_test)
        return Decision(decision=decision, reason=reason, what_would_change=change, evidence=record)

    def mismatch(name: str, srm: SrmCheck, rule: Rule) -> Decision:
        share = srm.observed[1] / max(1, sum(srm.observed))
        return verdict(
            INVALID, rule,
            f"sample ratio mismatch on {name}: champion {srm.observed[0]}, challenger {srm.observed[1]} (challenger "
            f"share {share:.3f}, planned {plan.ab_split_b}), always-valid p={srm.p_value:.2g} < {srm.threshold:.2g}"
            f"; the comparison cannot be trusted, the experiment is paused",
            "An operator resuming it once the cause is found (or ending it) changes this; paused at the maximum "
            f"duration ({plan.max_duration_hours:g} h) it is rolled back.",
        )  # fmt: skip

    srm_flagged = act_on_srm and (srm_all.mismatch or srm_labelled.mismatch)
    if timed_out and (evidence.paused or srm_flagged):
        state = "paused" if evidence.paused else "sample ratio mismatch"
        return verdict(
            ROLLBACK, "max_duration",
            f"still invalid at the maximum duration ({plan.max_duration_hours:g} h): {state} (SRM p all "
            f"{srm_all.p_value:.3g}, labelled {srm_labelled.p_value:.3g})",
            "Only a resume before the maximum duration would have let the experiment reach a verdict.",
        )  # fmt: skip
    if evidence.paused:
        return verdict(
            INVALID, "paused",
            f"the experiment is paused (the champion serves everyone); it stays paused until an operator resumes or "
            f"ends it: {summary}",
            "A resume (python -m flows.controls resume) lets the looks decide again; at the maximum "
            f"duration ({plan.max_duration_hours:g} h) a paused experiment is rolled back.",
        )  # fmt: skip
    if act_on_srm and srm_all.mismatch:
        return mismatch("assigned users", srm_all, "srm_all")
    breached = [g for g in guardrails if not g.holds]
    if breached:
        details = "; ".join(f"{g.name} {g.detail}" for g in breached)
        return verdict(
            ROLLBACK, "guardrail", f"guardrail breached: {details}",
            "Nothing later can change this: a breach proven by an always-valid test stands.",
        )  # fmt: skip
    if act_on_srm and srm_labelled.mismatch:
        return mismatch("labelled users", srm_labelled, "srm_labelled")
    if test is not None and test.lower > 0:
        pending = [g for g in guardrails if g.values.get("breached_now")]
        if pending:
            details = "; ".join(f"{g.name} {g.detail}" for g in pending)
            return verdict(
                CONTINUE, "guardrail_pending",
                f"challenger better, but a guardrail breach awaits confirmation at the next look: {details}; {summary}",
                "PROMOTE at the next look if the latency breach is not seen again; ROLLBACK if it is.",
            )  # fmt: skip
        unshown = [g for g in guardrails if not g.shown]
        if unshown:
            g = unshown[0]
            return verdict(
                CONTINUE, "non_inferiority_pending",
                f"challenger better, but {g.name} non-inferiority is not shown yet ({g.detail}); {summary}",
                f"PROMOTE once the upper end of the {g.name} difference ({_num(g.values.get('cs_upper'))}) falls "
                f"below its margin ({_num(g.values.get('margin'))}); ROLLBACK if its lower end rises above it.",
            )  # fmt: skip
        return verdict(
            PROMOTE, "better", f"challenger better: {summary}; guardrails hold and show non-inferiority",
            f"A ROLLBACK would have needed the lift's interval below 0 (its lower end is {test.lower:+.4f}); after "
            "the promotion the watch still rolls back a new champion proven below its promise.",
        )  # fmt: skip
    if test is not None and test.upper < 0:
        return verdict(
            ROLLBACK, "worse", f"challenger worse: {summary}",
            f"Only an interval reaching above 0 could have kept it (its upper end is {test.upper:+.4f}).",
        )  # fmt: skip
    if timed_out:
        return verdict(
            ROLLBACK, "max_duration",
            f"no win within the maximum duration ({evidence.elapsed_hours:.1f} h >= {plan.max_duration_hours:g} h): "
            f"{summary}",
            "A lower end of the lift's interval above 0 before the maximum duration would have promoted it.",
        )  # fmt: skip
    if test is None:
        return verdict(
            CONTINUE, "too_few_labelled",
            f"waiting for {MIN_LABELLED_PER_ARM} scored outcomes per arm (champion {a.scored}, challenger "
            f"{b.scored})",
            f"A verdict becomes possible once both arms have {MIN_LABELLED_PER_ARM} labelled or failed requests.",
        )  # fmt: skip
    return verdict(CONTINUE, "undecided", f"no conclusive difference yet: {summary}", _what_would_change(test, a, b))


def _num(value: object) -> str:
    return f"{value:+.4f}" if isinstance(value, float) else str(value)


def _what_would_change(test: SequentialResult, a: ArmEvidence, b: ArmEvidence) -> str:
    """The one sentence of an undecided look: how far each end of the interval is from deciding."""
    radius = (test.upper - test.lower) / 2
    n = min(a.scored, b.scored)
    if test.d_hat > 0:
        more = max(0, math.ceil(n * (radius / test.d_hat) ** 2) - n)
        return (
            f"PROMOTE once the interval's lower end ({test.lower:+.4f}) rises above 0: if the lift stays at "
            f"{test.d_hat:+.4f}, after about {more} more scored outcomes per arm (the interval narrows like "
            f"1/sqrt(n)); ROLLBACK if its upper end ({test.upper:+.4f}) falls below 0 or at the maximum duration."
        )
    if test.d_hat < 0:
        more = max(0, math.ceil(n * (radius / -test.d_hat) ** 2) - n)
        return (
            f"ROLLBACK once the interval's upper end ({test.upper:+.4f}) falls below 0: if the lift stays at "
            f"{test.d_hat:+.4f}, after about {more} more scored outcomes per arm; PROMOTE only if the lift turns "
            "positive and its lower end rises above 0."
        )
    return "With no lift at all, only the maximum duration ends it (ROLLBACK); a lift either way would decide."


def _summary(a: ArmEvidence, b: ArmEvidence, test: SequentialResult | None, plan: ExperimentPlan) -> str:
    if test is None:
        return f"too few scored outcomes (champion {a.scored}, challenger {b.scored})"
    level = round(100 * (1 - plan.alpha), 2)
    sa, sb = a.sums, b.sums
    return (
        f"accuracy (failures count as misses) champion v{a.version} {sa.sum_x / sa.sum_n:.4f} (n={sa.sum_n}, "
        f"{sa.users} users) vs challenger v{b.version} {sb.sum_x / sb.sum_n:.4f} (n={sb.sum_n}, {sb.users} users), "
        f"lift {test.d_hat:+.4f}, {level:g}% always-valid CS [{test.lower:+.4f}, {test.upper:+.4f}] (cluster-robust "
        f"over users), always-valid p={test.p_value:.3g}, {min(a.scored, b.scored)}/{plan.min_samples_per_arm} "
        "planned per arm"
    )


def _arm(arm: ArmEvidence) -> ArmSummary:
    metrics = arm_metrics(arm.confusion)
    deff = None
    if arm.user_sums is not None and arm.user_sums.users > 1:
        deff = ratio_stats(arm.user_sums).design_effect
    return ArmSummary(
        version=arm.version,
        assigned=arm.assigned,
        requests=arm.requests,
        errors=arm.errors,
        error_rate=arm.errors / arm.assigned if arm.assigned else None,
        labelled=arm.labelled,
        correct=arm.correct,
        accuracy=arm.correct / arm.labelled if arm.labelled else None,
        scored=arm.scored,
        scored_accuracy=arm.sums.sum_x / arm.scored if arm.scored else None,
        users=arm.users,
        labelled_users=arm.labelled_users,
        design_effect=deff,
        precision_macro=metrics["precision_macro"],
        recall_macro=metrics["recall_macro"],
        f1_macro=metrics["f1_macro"],
        latency_p50_ms=arm.latency_p50_ms,
        latency_p95_ms=arm.latency_p95_ms,
    )


def _evidence(
    evidence: Evidence,
    tau: float,
    srm_all: SrmCheck,
    srm_labelled: SrmCheck,
    guardrails: list[Guardrail],
    test: SequentialResult | None,
    rule: Rule,
    reference_test: bool = True,
) -> DecisionEvidence:
    plan, a, b = evidence.plan, evidence.champion, evidence.challenger
    primary = None
    if test is not None:
        primary = PrimaryTest(
            metric="accuracy (failed predictions count as misses)",
            method="always-valid Gaussian-mixture confidence sequence, cluster-robust (delta-method) variance "
            "over users",
            d_hat=test.d_hat,
            cs_lower=test.lower,
            cs_upper=test.upper,
            confidence=1 - plan.alpha,
            always_valid_p=test.p_value,
            log_lambda=test.log_lambda,
            variance=test.variance,
            tau=tau,
        )
    scored = min(a.scored, b.scored)
    return DecisionEvidence(
        rule=rule,
        arms={CHAMPION: _arm(a), CHALLENGER: _arm(b)},
        tau=tau,
        min_labelled_per_arm=MIN_LABELLED_PER_ARM,
        primary=primary,
        plain_chi2=PlainChi2(
            p_value=plain_chi2(a.labelled, a.correct, b.labelled, b.correct) if reference_test else float("nan"),
            note="not peeking-safe, requests taken as independent: valid at one pre-planned look only, for reference",
        ),
        srm=SrmEvidence(all_traffic=srm_all, labelled=srm_labelled, overridden=evidence.srm_overridden),
        guardrails=guardrails,
        plan=plan,
        elapsed_hours=evidence.elapsed_hours,
        samples=Samples(
            labelled_per_arm=scored,
            planned_per_arm=plan.min_samples_per_arm,
            fixed_horizon_per_arm=plan.fixed_horizon_samples_per_arm,
            fraction_of_plan=scored / plan.min_samples_per_arm,
        ),
        paused=evidence.paused,
    )


# --- the post-promotion watch -------------------------------------------------------------------------------------


def promise_of(decision: Decision, period_hours: float, promoted_at: datetime) -> Promise:
    """The promise a PROMOTE makes: the challenger keeps `WATCH_KEPT_SHARE` of the lift the experiment estimated.

    Kept as the estimate and a tolerance (threshold = estimate - tolerance, never below the previous champion's
    level): tolerance = (1 - kept share) x the estimated lift + `WATCH_TOLERANCE_SE` standard errors.
    """
    ev = decision.evidence
    a, b = ev.arms[CHAMPION], ev.arms[CHALLENGER]
    variance = ev.primary.variance if ev.primary is not None else 0.0
    # The challenger's own share of the lift's variance is not kept apart: half of it is the usual case (equal arms).
    se = math.sqrt(variance / 2)
    expected, previous = b.scored_accuracy or 0.0, a.scored_accuracy or 0.0
    return Promise(
        version=b.version,
        previous_version=a.version,
        expected_accuracy=expected,
        previous_accuracy=previous,
        tolerance=(1 - WATCH_KEPT_SHARE) * max(0.0, expected - previous) + WATCH_TOLERANCE_SE * se,
        period_hours=period_hours,
        alpha=ev.plan.alpha,
        tau=WATCH_TAU_SE * se if se > 0 else ev.plan.mde,
        promoted_at=_utc(promoted_at),
        loop_id=ev.plan.loop_id,
    )


def watch(promise: Promise, sums: UserSums | None, elapsed_hours: float) -> WatchResult:
    """One look of the post-promotion watch at the new champion's traffic since its promotion.

    A regression is proven when the always-valid one-sided upper bound of the new champion's accuracy
    (cluster-robust, failures as misses; `ab_stats.one_sided_upper`, all of alpha on the side that matters) lies
    below the promise's threshold: the flow moves `champion` back. After `period_hours` the watch ends.

    Args:
        promise: What the experiment estimated.
        sums: The new champion's per-user sums since the promotion (None: no traffic yet).
        elapsed_hours: Hours since the promotion.

    Returns:
        REGRESSION, HOLDS (so far), WATCHING (too few outcomes yet) or DONE (the period is over).
    """
    threshold = promise.threshold
    base = {
        "model_version": promise.version,
        "previous_version": promise.previous_version,
        "expected_accuracy": promise.expected_accuracy,
        "previous_accuracy": promise.previous_accuracy,
        "threshold": threshold,
        "elapsed_hours": elapsed_hours,
        "period_hours": promise.period_hours,
    }
    if sums is None or sums.sum_n < MIN_LABELLED_PER_ARM:
        scored = 0 if sums is None else sums.sum_n
        verdict = "DONE" if elapsed_hours >= promise.period_hours else "WATCHING"
        return WatchResult(
            verdict=verdict, reason=f"{scored} scored outcomes since the promotion, needs {MIN_LABELLED_PER_ARM}",
            accuracy=None, cs_lower=None, cs_upper=None, scored=scored, **base,
        )  # fmt: skip
    stats = ratio_stats(sums)
    high = one_sided_upper(stats.ratio, stats.variance, alpha=promise.alpha, tau=promise.tau)
    numbers = (
        f"v{promise.version} accuracy {stats.ratio:.4f} since its promotion (n={stats.n}, {stats.users} users), "
        f"always-valid upper bound {high:.4f} ({100 * (1 - promise.alpha):g}%, one-sided); promised "
        f"{promise.expected_accuracy:.4f} (threshold {threshold:.4f}), previous champion v{promise.previous_version} "
        f"{promise.previous_accuracy:.4f}"
    )
    if high < threshold:
        verdict, reason = "REGRESSION", f"regression proven: {numbers}"
    elif elapsed_hours >= promise.period_hours:
        verdict, reason = "DONE", f"kept its promise over the {promise.period_hours:g} h watch: {numbers}"
    else:
        verdict, reason = "HOLDS", f"no regression proven so far: {numbers}"
    return WatchResult(
        verdict=verdict, reason=reason, accuracy=stats.ratio, cs_lower=None, cs_upper=high, scored=stats.n, **base
    )
