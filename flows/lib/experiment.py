"""Peeking-safe A/B statistics: sample size, always-valid test, SRM, guardrails and the decision they add up to.

The A/B flow looks at the router's cumulative counts every hour. A fixed-horizon test (chi-squared) repeated at
every look promotes a challenger that is no better far more often than `alpha`; here the primary test is an
always-valid confidence sequence (a Gaussian-mixture SPRT on the difference of accuracies), whose error
guarantee holds over any number of looks and any stopping rule. Everything is a pure function of counts, so the
flow, the unit tests and the simulation benchmark (`bench/ab_simulation.py`) all decide through `decide()`.

References:
    Johari, Pekelis, Walsh (2017), "Peeking at A/B tests: why it matters, and what to do about it" (always valid
    p-values, mixture SPRT). Howard, Ramdas, McAuliffe, Sekhon (2021), "Time-uniform, nonparametric,
    nonasymptotic confidence sequences" (normal-mixture boundary). Waudby-Smith, Arbour, Sinha, Kennedy, Ramdas
    (2023), "Time-uniform central limit theory and asymptotic confidence sequences".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import msgspec
import numpy as np
from scipy.optimize import brentq
from scipy.stats import binomtest, chi2_contingency, chisquare, norm
from sklearn.metrics import precision_recall_fscore_support

from contracts.api import ArmOutcome, ConfusionCell, DecisionName, ExperimentPlan, LatencyBucket, Outcomes

MIN_LABELLED_PER_ARM = 10
"""No verdict on the primary metric before both arms have this many labelled outcomes.

The confidence sequence is valid at any sample size in the asymptotic sense only; below a handful of outcomes the
normal approximation of each arm's accuracy is meaningless, and a CS that wide could not exclude 0 anyway.
"""
MIN_BUCKET_REQUESTS = 5
"""Answered requests per arm in a time bucket before the latency guardrail compares the arms in it."""
MIN_MATCHED_BUCKETS = 5
"""Time buckets with both arms compared before the latency guardrail can be breached (a sign test of fewer cannot
reach alpha = 0.05)."""
ERROR_GUARDRAIL_TAU = 0.1
"""Mixing scale of the error-rate guardrail's confidence sequence."""
MIN_SRM_EXPECTED = 5
"""Expected count per arm below which the chi-squared SRM test is not run (its usual validity condition)."""


# --- sample size ---------------------------------------------------------------------------------------------


def fixed_horizon_n(*, baseline: float, mde: float, alpha: float, power: float) -> int:
    """Per-arm sample size of a single-look two-sided two-proportion z-test.

    n = (z_{1-alpha/2} sqrt(2 pbar qbar) + z_{power} sqrt(p1 q1 + p2 q2))^2 / mde^2, with pbar the mean of
    p1 = baseline and p2 = baseline + mde (Fleiss, Levin, Paik, without continuity correction).

    Args:
        baseline: The champion's expected accuracy.
        mde: Absolute lift to detect.
        alpha: Two-sided significance level.
        power: Probability of rejecting when the lift is `mde`.

    Returns:
        Labelled outcomes per arm, rounded up.
    """
    p1, p2 = _check_rates(baseline, mde)
    pbar = (p1 + p2) / 2
    z_alpha, z_power = norm.ppf(1 - alpha / 2), norm.ppf(power)
    root = z_alpha * math.sqrt(2 * pbar * (1 - pbar)) + z_power * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil(root**2 / mde**2)


def sequential_power(n: float, *, baseline: float, mde: float, alpha: float, tau: float) -> float:
    """Probability that the confidence sequence lies entirely above 0 at a single look after `n` outcomes per arm.

    With v = (p1 q1 + p2 q2) / n and d_hat ~ N(mde, v), the CS excludes 0 from above when d_hat > r(v), its
    radius, so the power is Phi((mde - r(v)) / sqrt(v)). Only the correct direction counts: a CS below 0 would
    roll the better challenger back.

    Args:
        n: Labelled outcomes per arm (real-valued, for root finding).
        baseline: The champion's accuracy.
        mde: The true lift.
        alpha: Level of the confidence sequence.
        tau: Mixing standard deviation.

    Returns:
        The power in [0, 1].
    """
    p1, p2 = _check_rates(baseline, mde)
    v = (p1 * (1 - p1) + p2 * (1 - p2)) / n
    return float(norm.cdf((mde - cs_radius(v, alpha=alpha, tau=tau)) / math.sqrt(v)))


def plan_sample_size(
    *, baseline: float, mde: float, alpha: float, power: float, tau: float | None = None
) -> tuple[int, int]:
    """Labelled outcomes per arm the sequential test and a fixed-horizon test need.

    The sequential size is the smallest n at which the always-valid test, looked at once at n, promotes with
    probability >= `power` when the true lift is `mde`. It is conservative: the flow also looks earlier, and
    every earlier look can only add chances to stop with a promotion.

    Args:
        baseline: The champion's expected accuracy.
        mde: Minimum detectable effect (absolute lift).
        alpha: Level of the test (two-sided for the fixed horizon; total error of the CS).
        power: Target power.
        tau: Mixing standard deviation of the sequential test (default `mde`).

    Returns:
        (sequential_n_per_arm, fixed_horizon_n_per_arm).
    """
    tau = mde if tau is None else tau
    fixed = fixed_horizon_n(baseline=baseline, mde=mde, alpha=alpha, power=power)

    def gap(n: float) -> float:
        return sequential_power(n, baseline=baseline, mde=mde, alpha=alpha, tau=tau) - power

    if gap(1.0) >= 0:
        return 1, fixed
    # Bracket the root by doubling from the fixed-horizon size (in practice too small for the CS already).
    low, high = 1.0, float(max(fixed, 2))
    while gap(high) < 0:
        low, high = high, high * 2
    sequential = math.ceil(brentq(gap, low, high, xtol=1e-6) - 1e-9)
    # The power is increasing in n over the bracket in practice; step up in case rounding landed just short.
    while gap(sequential) < 0:
        sequential += 1
    return sequential, fixed


def _check_rates(baseline: float, mde: float) -> tuple[float, float]:
    # A champion already above 1 - mde leaves no room for a lift of mde: no plan can be powered for it, and the
    # caller has to choose (cap the baseline, or plan a smaller mde) rather than get a meaningless number.
    if not (0.0 < mde < 1.0 and 0.0 <= baseline and baseline + mde <= 1.0):
        raise ValueError(f"need 0 < mde < 1 and 0 <= baseline <= 1 - mde (got baseline {baseline}, mde {mde})")
    return baseline, baseline + mde


# --- the always-valid test ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequentialResult:
    """The always-valid test of d = p_b - p_a (challenger minus champion) after the counts seen so far."""

    d_hat: float
    lower: float
    """Lower end of the (1 - alpha) confidence sequence (clipped to [-1, 1])."""
    upper: float
    p_value: float
    """Always-valid p-value of d = d0: min(1, 1 / Lambda)."""
    lambda_: float
    """Mixture likelihood ratio against d = d0 (inf when it overflows; `log_lambda` is always finite)."""
    log_lambda: float
    variance: float
    tau: float
    alpha: float
    d0: float = 0.0


def diff_variance(n_a: int, x_a: int, n_b: int, x_b: int) -> float:
    """Unpooled variance of p_b - p_a, with Laplace-smoothed proportions (x + 1) / (n + 2).

    Unpooled because the confidence sequence must cover d wherever it is, not only at d = 0 (a pooled variance
    is the variance under "no difference" only), and the error guardrail tests d against a non-zero margin.
    The smoothing (the Agresti-Caffo adjustment) keeps the variance positive when an arm is always right or
    always wrong (p = 0 or 1), where the plain Wald variance is 0 and the likelihood ratio divides by zero;
    it vanishes as n grows.
    """
    p_a, p_b = (x_a + 1) / (n_a + 2), (x_b + 1) / (n_b + 2)
    return p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b


def cs_radius(v: float, *, alpha: float, tau: float) -> float:
    """Half-width of the (1 - alpha) Gaussian-mixture confidence sequence for an estimate of variance `v`.

    sqrt(2 v (v + tau^2) / tau^2 * (log(1/alpha) + log((v + tau^2) / v) / 2)), the set of d0 whose mixture
    likelihood ratio stays below 1 / alpha.
    """
    t2 = tau * tau
    return math.sqrt(2 * v * (v + t2) / t2 * (math.log(1 / alpha) + 0.5 * math.log((v + t2) / v)))


def log_mixture_lr(d_hat: float, v: float, *, tau: float, d0: float = 0.0) -> float:
    """log Lambda, with Lambda = sqrt(v / (v + tau^2)) exp(tau^2 (d_hat - d0)^2 / (2 v (v + tau^2)))."""
    t2 = tau * tau
    return 0.5 * math.log(v / (v + t2)) + t2 * (d_hat - d0) ** 2 / (2 * v * (v + t2))


def sequential_test(
    n_a: int, x_a: int, n_b: int, x_b: int, *, alpha: float, tau: float, d0: float = 0.0
) -> SequentialResult:
    """Always-valid test and confidence sequence for the difference of two proportions.

    Arm a is the champion, arm b the challenger. With prior N(d0, tau^2) on the difference, the mixture
    likelihood ratio of the asymptotically normal estimate d_hat is a nonnegative martingale under d = d0, so
    by Ville's inequality P(Lambda ever >= 1/alpha) <= alpha at every look whatever the stopping rule. The
    confidence sequence is the set of d0 not rejected, and 0 is outside it exactly when p <= alpha.

    Args:
        n_a: Labelled outcomes of the champion.
        x_a: Successes (correct predictions) of the champion.
        n_b: Labelled outcomes of the challenger.
        x_b: Successes of the challenger.
        alpha: Total error of the confidence sequence over all looks.
        tau: Mixing standard deviation (the scale of effect the test is most sensitive to).
        d0: The difference tested for the p-value and the likelihood ratio.

    Returns:
        The estimate, the confidence sequence and the always-valid p-value.
    """
    if n_a < 1 or n_b < 1:
        raise ValueError(f"both arms need at least one outcome (got {n_a} and {n_b})")
    if not (0 <= x_a <= n_a and 0 <= x_b <= n_b):
        raise ValueError(f"successes must lie in [0, n] (got {x_a}/{n_a} and {x_b}/{n_b})")
    if tau <= 0:
        raise ValueError(f"tau must be positive (got {tau})")
    d_hat = x_b / n_b - x_a / n_a
    v = diff_variance(n_a, x_a, n_b, x_b)
    radius = cs_radius(v, alpha=alpha, tau=tau)
    log_lambda = log_mixture_lr(d_hat, v, tau=tau, d0=d0)
    return SequentialResult(
        d_hat=d_hat,
        lower=max(-1.0, d_hat - radius),
        upper=min(1.0, d_hat + radius),
        p_value=math.exp(-log_lambda) if log_lambda > 0 else 1.0,
        lambda_=math.exp(log_lambda) if log_lambda < 700 else math.inf,
        log_lambda=log_lambda,
        variance=v,
        tau=tau,
        alpha=alpha,
        d0=d0,
    )


def plain_chi2(n_a: int, x_a: int, n_b: int, x_b: int) -> float:
    """P-value of the chi-squared test of the 2x2 table (correct/incorrect by arm), Yates-corrected.

    Valid at one pre-planned look only; reported next to the always-valid p-value, never decided on.
    Returns 1.0 when the table has nothing to test (an empty arm, or both arms always right or always wrong).
    """
    table = [[x_a, n_a - x_a], [x_b, n_b - x_b]]
    if min(n_a, n_b, x_a + x_b, n_a + n_b - x_a - x_b) == 0:
        return 1.0
    return float(chi2_contingency(table)[1])


# --- sample ratio mismatch ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SrmResult:
    """Whether the traffic split between the arms is the configured one."""

    p_value: float
    observed: tuple[int, int]
    """(champion, challenger)."""
    expected: tuple[float, float]
    mismatch: bool
    enough_data: bool = True
    """False when an expected count is below `MIN_SRM_EXPECTED`: no test was run and `mismatch` is False."""


def srm_check(counts: Mapping[str, int] | tuple[int, int], split_b: float, threshold: float = 0.001) -> SrmResult:
    """Sample ratio mismatch: a chi-squared goodness-of-fit test of the arm counts against the configured split.

    A mismatch means assignment or logging is broken (or biased, e.g. one arm's requests fail or lose their
    labels more often), and no comparison of the arms can be trusted. The strict default threshold keeps the
    false alarms of repeated looks rare.

    Args:
        counts: {"champion": n, "challenger": n} or (n_champion, n_challenger).
        split_b: Configured share of the challenger.
        threshold: Mismatch when the p-value is below it.

    Returns:
        The test result.
    """
    if isinstance(counts, Mapping):
        observed = (int(counts.get("champion", 0)), int(counts.get("challenger", 0)))
    else:
        observed = (int(counts[0]), int(counts[1]))
    total = sum(observed)
    expected = (total * (1 - split_b), total * split_b)
    if min(expected) < MIN_SRM_EXPECTED:
        return SrmResult(1.0, observed, expected, mismatch=False, enough_data=False)
    p_value = float(chisquare(observed, f_exp=expected).pvalue)
    return SrmResult(p_value, observed, expected, mismatch=p_value < threshold)


# --- per-arm metrics ------------------------------------------------------------------------------------------


def arm_metrics(cells: Iterable[ConfusionCell | tuple[str, str, int]]) -> dict:
    """Accuracy and macro precision, recall and F1 of one arm from its confusion counts.

    Macro over the labels seen in either the labels or the predictions (sklearn's default), each distinct
    (label, prediction) pair weighted by its count; a label never predicted scores 0 precision.

    Args:
        cells: ConfusionCell structs or (label, prediction, count) tuples.

    Returns:
        labelled, accuracy, precision_macro, recall_macro, f1_macro (None without any labelled outcome).
    """
    pairs = [_cell(c) for c in cells]
    pairs = [p for p in pairs if p[2] > 0]
    total = sum(count for _, _, count in pairs)
    if total == 0:
        return {"labelled": 0, "accuracy": None, "precision_macro": None, "recall_macro": None, "f1_macro": None}
    y_true, y_pred, weight = zip(*pairs, strict=True)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, average="macro", sample_weight=weight, zero_division=0
    )
    return {
        "labelled": total,
        "accuracy": sum(count for label, pred, count in pairs if label == pred) / total,
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
    }


def _cell(cell: ConfusionCell | tuple[str, str, int]) -> tuple[str, str, int]:
    if isinstance(cell, ConfusionCell):
        return str(cell.label), str(cell.prediction), int(cell.count)
    label, prediction, count = cell
    return str(label), str(prediction), int(count)


# --- guardrails -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuardrailResult:
    """One guardrail: does the challenger stay within its margin of the champion?"""

    name: str
    holds: bool
    detail: str
    values: dict = field(default_factory=dict)


def error_guardrail(
    assigned_a: int, errors_a: int, assigned_b: int, errors_b: int, *, margin: float, alpha: float, tau: float
) -> GuardrailResult:
    """Error-rate guardrail: breached once the CS proves the challenger's error rate exceeds the champion's + margin.

    Error rate = errors / assigned requests (answered + failed). Tested with the same always-valid CS as the
    primary metric, so looking every hour does not inflate false breaches beyond `alpha`.

    Args:
        assigned_a: Requests assigned to the champion (answered and failed).
        errors_a: Failed requests of the champion.
        assigned_b: The same for the challenger.
        errors_b: Failed requests of the challenger.
        margin: Tolerated absolute increase of the error rate.
        alpha: Level of the confidence sequence.
        tau: Mixing standard deviation.

    Returns:
        BREACHED (holds=False) when the CS lower bound of err_b - err_a exceeds `margin`.
    """
    if min(assigned_a, assigned_b) < 1:
        return GuardrailResult("error_rate", True, "not enough data (an arm has no request yet)", {"margin": margin})
    test = sequential_test(assigned_a, errors_a, assigned_b, errors_b, alpha=alpha, tau=tau, d0=margin)
    values = {
        "champion_error_rate": errors_a / assigned_a,
        "challenger_error_rate": errors_b / assigned_b,
        "diff": test.d_hat,
        "cs_lower": test.lower,
        "cs_upper": test.upper,
        "margin": margin,
        "tau": tau,
    }
    rates = f"error rate {errors_b / assigned_b:.4f} vs champion {errors_a / assigned_a:.4f}"
    span = f"CS of the difference [{test.lower:+.4f}, {test.upper:+.4f}]"
    if test.lower > margin:
        return GuardrailResult("error_rate", False, f"BREACHED: {rates}, {span} above the margin {margin}", values)
    return GuardrailResult("error_rate", True, f"holds: {rates}, {span}, margin {margin}", values)


@dataclass(frozen=True)
class BucketLatency:
    """One arm's latency within one time bucket, as the router reports it."""

    start: datetime
    arm: str
    requests: int
    p95_ms: float
    compute_ms: float | None = None
    """Median CPU time of the model call per request (None: not measured)."""

    @classmethod
    def from_contract(cls, bucket: LatencyBucket) -> BucketLatency:
        """From the router's `LatencyBucket`."""
        return cls(bucket.start, bucket.arm, bucket.requests, bucket.latency_p95_ms, bucket.compute_ms_median)


def matched_buckets(buckets: Iterable[BucketLatency]) -> list[tuple[BucketLatency, BucketLatency]]:
    """(champion, challenger) pairs of the time buckets in which both arms answered `MIN_BUCKET_REQUESTS` requests."""
    by_start: dict[datetime, dict[str, BucketLatency]] = {}
    for bucket in buckets:
        if bucket.requests >= MIN_BUCKET_REQUESTS:
            by_start.setdefault(bucket.start, {})[bucket.arm] = bucket
    return [
        (arms["champion"], arms["challenger"])
        for start, arms in sorted(by_start.items())
        if "champion" in arms and "challenger" in arms
    ]


def latency_guardrail(
    buckets: Iterable[BucketLatency],
    *,
    margin: float,
    slack_ms: float,
    alpha: float,
    looks_needed: int = 1,
    prior_breaches: int = 0,
) -> GuardrailResult:
    """p95 latency guardrail: the challenger is slower than the champion's p95 x (1 + margin) + slack in most time
    buckets, its model costs more than `slack_ms` extra CPU per request, and this held at `looks_needed` looks.

    Both arms are served by the same processes at the same moments, so a busy machine slows both within a time
    bucket: the arms are compared bucket by bucket, never across periods of different load. "Most buckets" is a
    one-sided sign test (scipy's `binomtest`) of the buckets where the challenger's p95 is over its limit, at
    level `alpha`. Load inflates latency, and it inflates a small difference in model cost into a large one in
    milliseconds; the CPU time of the model call is what load does not inflate, so a latency difference counts only
    when the challenger's model also costs more than `slack_ms` of extra CPU per request (the practical floor).
    A breach rolls back only once it has been seen at `looks_needed` consecutive looks.

    Args:
        buckets: Per arm and time bucket: requests, p95 latency, median compute time.
        margin: Tolerated relative increase of the p95.
        slack_ms: Tolerated absolute increase on top, and the floor on the extra compute time.
        alpha: Level of the sign test.
        looks_needed: Consecutive looks with a breach before it counts.
        prior_breaches: Consecutive looks right before this one that saw a breach.

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
        return GuardrailResult("latency_p95", True, detail, values)
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
        return GuardrailResult("latency_p95", False, f"BREACHED at {streak} consecutive looks: {text}", values)
    if breached_now:
        return GuardrailResult(
            "latency_p95", True, f"breach seen at {streak} of {looks_needed} looks needed, not yet acted on: {text}",
            values,
        )  # fmt: skip
    why = "" if slower else "not slower in most buckets"
    if slower and not costlier:
        why = f"slower under load, but the model costs no more than the {slack_ms:g} ms floor"
    return GuardrailResult("latency_p95", True, f"holds ({why}): {text}", values)


# --- evidence and decision ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmEvidence:
    """The counts of one arm that the decision uses."""

    version: str
    requests: int
    """Answered requests (the router's `requests`)."""
    errors: int
    labelled: int
    correct: int
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    confusion: tuple[tuple[str, str, int], ...] = ()
    users: int | None = None
    """Distinct users assigned (None: one request per user, as in the simulations)."""
    labelled_users: int | None = None
    """Distinct users with a labelled request (None: as `labelled`)."""

    @property
    def assigned(self) -> int:
        """Requests assigned to this arm: answered plus failed."""
        return self.requests + self.errors

    @property
    def assigned_units(self) -> int:
        """Units of randomisation assigned to this arm: users when the router reports them, else requests."""
        return self.assigned if self.users is None else self.users

    @property
    def labelled_units(self) -> int:
        """Users (or, without user counts, requests) of this arm with a label."""
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
            confusion=tuple(_cell(c) for c in outcome.confusion),
            # 0 users with traffic means a router that does not count users: fall back to requests.
            users=outcome.users or None,
            labelled_users=outcome.labelled_users or None,
        )


@dataclass(frozen=True)
class Evidence:
    """Everything `decide()` looks at: per-arm counts, the plan, and how long the experiment has run."""

    champion: ArmEvidence
    challenger: ArmEvidence
    plan: ExperimentPlan
    elapsed_hours: float | None
    """Hours since the experiment started (None when the router does not know its start)."""
    tau: float | None = None
    """Mixing standard deviation of the primary test (None: the plan's mde)."""
    latency_buckets: tuple[BucketLatency, ...] = ()
    """Latency per arm and time bucket (none: the latency guardrail has no data and holds)."""
    prior_latency_breaches: int = 0
    """Consecutive looks right before this one whose latency guardrail saw a breach."""


def evidence_from_outcomes(
    outcomes: Outcomes, plan: ExperimentPlan, now: datetime, *, prior_latency_breaches: int = 0
) -> Evidence:
    """Build the evidence from the router's outcome counts, the experiment's plan and the current time.

    Args:
        outcomes: The router's counts of the current experiment.
        plan: The plan made when the challenger was registered.
        now: The time of this look (naive datetimes are taken as UTC).
        prior_latency_breaches: Consecutive earlier looks that saw a latency breach.

    Returns:
        The evidence for `decide()`.
    """
    elapsed = None
    if outcomes.started_at is not None:
        elapsed = (_utc(now) - _utc(outcomes.started_at)).total_seconds() / 3600
    return Evidence(
        champion=ArmEvidence.from_outcome(outcomes.arm("champion"), plan.champion_version),
        challenger=ArmEvidence.from_outcome(outcomes.arm("challenger"), plan.challenger_version),
        plan=plan,
        elapsed_hours=elapsed,
        latency_buckets=tuple(BucketLatency.from_contract(b) for b in outcomes.latency_buckets),
        prior_latency_breaches=prior_latency_breaches,
    )


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@dataclass(frozen=True)
class Decision:
    """What to do with the challenger, why, and the numbers behind it (JSON-ready)."""

    decision: DecisionName
    reason: str
    evidence: dict

    def to_dict(self) -> dict:
        """The decision as plain JSON-ready data."""
        return {"decision": self.decision, "reason": self.reason, "evidence": self.evidence}


def decide(evidence: Evidence) -> Decision:
    """Decide on one look at the cumulative counts; safe to call at every look.

    In order:
      1. sample ratio mismatch on all assigned traffic -> INVALID;
      2. a breached guardrail (error rate; p95 latency seen at the plan's number of consecutive looks) -> ROLLBACK;
      2b. sample ratio mismatch on the labelled subset -> INVALID;
      3. the confidence sequence of the accuracy lift entirely above 0 -> PROMOTE (CONTINUE while a latency breach
         seen at this look awaits confirmation), entirely below -> ROLLBACK (only once both arms have
         `MIN_LABELLED_PER_ARM` labelled outcomes);
      4. the plan's maximum duration reached -> ROLLBACK (no win in time);
      5. otherwise CONTINUE.
    SRM and guardrails rest on all traffic, so they apply before the labelled minimum is reached.

    Args:
        evidence: Counts per arm, the plan, and the elapsed time.

    Returns:
        The decision; `evidence` holds every number it rests on, with `rule` naming the rule that fired.
    """
    plan, a, b = evidence.plan, evidence.champion, evidence.challenger
    tau = plan.mde if evidence.tau is None else evidence.tau
    # Users are what the router randomises, so the ratio is checked on users: requests per user vary, and a
    # request-level test would flag heavy users as a mismatch.
    srm_all = srm_check((a.assigned_units, b.assigned_units), plan.ab_split_b, plan.srm_threshold)
    srm_labelled = srm_check((a.labelled_units, b.labelled_units), plan.ab_split_b, plan.srm_threshold)
    # The error guardrail is there to catch a broken challenger fast: its mixture scale is set for gross
    # failures (tens of percent) rather than for excesses near the margin, which it still catches, later.
    tau_errors = ERROR_GUARDRAIL_TAU
    guardrails = [
        error_guardrail(
            a.assigned,
            a.errors,
            b.assigned,
            b.errors,
            margin=plan.guardrail_error_margin,
            alpha=plan.alpha,
            tau=tau_errors,
        ),
        latency_guardrail(
            evidence.latency_buckets,
            margin=plan.guardrail_latency_margin,
            slack_ms=plan.guardrail_latency_slack_ms,
            alpha=plan.alpha,
            looks_needed=plan.guardrail_latency_looks,
            prior_breaches=evidence.prior_latency_breaches,
        ),
    ]
    enough = min(a.labelled, b.labelled) >= MIN_LABELLED_PER_ARM
    test = sequential_test(a.labelled, a.correct, b.labelled, b.correct, alpha=plan.alpha, tau=tau) if enough else None
    timed_out = evidence.elapsed_hours is not None and evidence.elapsed_hours >= plan.max_duration_hours
    record = _evidence_dict(evidence, tau, srm_all, srm_labelled, guardrails, test)

    def verdict(decision: DecisionName, rule: str, reason: str) -> Decision:
        return Decision(decision, reason, record | {"rule": rule})

    def mismatch(name: str, srm: SrmResult) -> Decision:
        share = srm.observed[1] / sum(srm.observed)
        return verdict(
            "INVALID",
            "srm_all" if srm is srm_all else "srm_labelled",
            f"sample ratio mismatch on {name}: champion {srm.observed[0]}, challenger {srm.observed[1]} "
            f"(challenger share {share:.3f}, planned {plan.ab_split_b}), p={srm.p_value:.2g} < "
            f"{plan.srm_threshold}; the comparison cannot be trusted",
        )

    if (srm_all.mismatch or srm_labelled.mismatch) and timed_out:
        # An experiment that cannot be trusted must not hold traffic forever.
        return verdict(
            "ROLLBACK",
            "max_duration",
            f"still invalid at the maximum duration ({plan.max_duration_hours} h): "
            f"sample ratio mismatch (p all {srm_all.p_value}, labelled {srm_labelled.p_value})",
        )
    if srm_all.mismatch:
        return mismatch("assigned users", srm_all)
    # Guardrails before the labelled SRM: a challenger that fails most requests has few labelled outcomes, and
    # that skew must read as the breach it is, not as an untrustworthy experiment that keeps serving.
    breached = [g for g in guardrails if not g.holds]
    if breached:
        details = "; ".join(f"{g.name} {g.detail}" for g in breached)
        return verdict("ROLLBACK", "guardrail", f"guardrail breached: {details}")
    if srm_labelled.mismatch:
        return mismatch("labelled users", srm_labelled)
    summary = _summary(a, b, test, plan)
    pending = [g for g in guardrails if g.values.get("breached_now")]
    if test is not None and test.lower > 0 and pending:
        # A breach seen once is not acted on, but a challenger that may be breaching is not promoted either.
        details = "; ".join(f"{g.name} {g.detail}" for g in pending)
        reason = f"challenger better, but a guardrail breach awaits confirmation at the next look: {details}; {summary}"
        return verdict("CONTINUE", "guardrail_pending", reason)
    if test is not None and test.lower > 0:
        return verdict("PROMOTE", "better", f"challenger better: {summary}; guardrails hold")
    if test is not None and test.upper < 0:
        return verdict("ROLLBACK", "worse", f"challenger worse: {summary}")
    if timed_out:
        return verdict(
            "ROLLBACK",
            "max_duration",
            f"no win within the maximum duration ({evidence.elapsed_hours:.1f} h >= {plan.max_duration_hours} h): "
            f"{summary}",
        )
    if test is None:
        return verdict(
            "CONTINUE",
            "too_few_labelled",
            f"waiting for {MIN_LABELLED_PER_ARM} labelled outcomes per arm "
            f"(champion {a.labelled}, challenger {b.labelled})",
        )
    return verdict("CONTINUE", "undecided", f"no conclusive difference yet: {summary}")


def _summary(a: ArmEvidence, b: ArmEvidence, test: SequentialResult | None, plan: ExperimentPlan) -> str:
    if test is None:
        return f"too few labelled outcomes (champion {a.labelled}, challenger {b.labelled})"
    level = round(100 * (1 - plan.alpha), 2)
    return (
        f"accuracy champion v{a.version} {a.correct / a.labelled:.4f} (n={a.labelled}) vs challenger v{b.version} "
        f"{b.correct / b.labelled:.4f} (n={b.labelled}), lift {test.d_hat:+.4f}, {level:g}% always-valid CS "
        f"[{test.lower:+.4f}, {test.upper:+.4f}], always-valid p={test.p_value:.3g}, "
        f"{min(a.labelled, b.labelled)}/{plan.min_samples_per_arm} planned per arm"
    )


def _evidence_dict(
    evidence: Evidence,
    tau: float,
    srm_all: SrmResult,
    srm_labelled: SrmResult,
    guardrails: list[GuardrailResult],
    test: SequentialResult | None,
) -> dict:
    plan, a, b = evidence.plan, evidence.champion, evidence.challenger
    primary = None
    if test is not None:
        primary = {
            "metric": "accuracy",
            "method": "always-valid Gaussian-mixture confidence sequence (mixture SPRT), unpooled variance",
            "d_hat": test.d_hat,
            "cs_lower": test.lower,
            "cs_upper": test.upper,
            "confidence": 1 - plan.alpha,
            "always_valid_p": test.p_value,
            "log_lambda": test.log_lambda,
            "variance": test.variance,
            "tau": tau,
        }
    labelled_min = min(a.labelled, b.labelled)
    record = {
        "arms": {"champion": _arm_dict(a), "challenger": _arm_dict(b)},
        "tau": tau,
        "min_labelled_per_arm": MIN_LABELLED_PER_ARM,
        "primary": primary,
        "plain_chi2": {
            "p_value": plain_chi2(a.labelled, a.correct, b.labelled, b.correct),
            "note": "not peeking-safe: valid at one pre-planned look only, reported for reference",
        },
        "srm": {"all_traffic": asdict(srm_all), "labelled": asdict(srm_labelled)},
        "guardrails": [asdict(g) for g in guardrails],
        "plan": msgspec.to_builtins(plan),
        "elapsed_hours": evidence.elapsed_hours,
        "samples": {
            "labelled_per_arm": labelled_min,
            "planned_per_arm": plan.min_samples_per_arm,
            "fixed_horizon_per_arm": plan.fixed_horizon_samples_per_arm,
            "fraction_of_plan": labelled_min / plan.min_samples_per_arm,
        },
    }
    return _json_ready(record)


def _arm_dict(arm: ArmEvidence) -> dict:
    metrics = arm_metrics(arm.confusion)
    return {
        "version": arm.version,
        "assigned": arm.assigned,
        "requests": arm.requests,
        "errors": arm.errors,
        "error_rate": arm.errors / arm.assigned if arm.assigned else None,
        "labelled": arm.labelled,
        "correct": arm.correct,
        "accuracy": arm.correct / arm.labelled if arm.labelled else None,
        "precision_macro": metrics["precision_macro"],
        "recall_macro": metrics["recall_macro"],
        "f1_macro": metrics["f1_macro"],
        "latency_p50_ms": arm.latency_p50_ms,
        "latency_p95_ms": arm.latency_p95_ms,
    }


def _json_ready(value: object) -> object:
    """Tuples to lists and non-finite floats to None, so `json.dumps(..., allow_nan=False)` accepts the result."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
