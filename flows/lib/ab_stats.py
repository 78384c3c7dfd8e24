"""Peeking-safe A/B statistics: sample size, cluster-robust variances, always-valid tests of a difference and of the
assignment ratio. Pure functions of counts; the decision policy that uses them is `flows.lib.ab_policy`.

The A/B flow looks at the router's cumulative counts every hour. A fixed-horizon test repeated at every look promotes
a challenger that is no better far more often than `alpha`; here every test is always valid: a Gaussian-mixture
confidence sequence for differences, and a Dirichlet-multinomial mixture for the assignment ratio, each a
nonnegative martingale under its null, so Ville's inequality bounds its error over any number of looks.

Users are the unit: the router randomises users, and one user's requests are alike (intra-user correlation). Each
arm's accuracy is the ratio sum(x_i) / sum(n_i) over users i, and its variance is the cluster-robust (delta-method)
one computed from per-user sums; a variance that treated requests as independent would be too small by the design
effect, and the tests would promote a challenger that is no better far more often than `alpha`.

References:
    Johari, Pekelis, Walsh (2017), "Peeking at A/B tests" (always-valid p-values, mixture SPRT). Howard, Ramdas,
    McAuliffe, Sekhon (2021), "Time-uniform, nonparametric, nonasymptotic confidence sequences". Lindon, Malek
    (2022), "Anytime-valid inference for multinomial count data" (the sequential SRM test). Deng, Knoblich, Lu
    (2018), "Applying the delta method in metric analytics".
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from scipy.optimize import brentq
from scipy.special import betaln
from scipy.stats import chi2_contingency, norm
from sklearn.metrics import precision_recall_fscore_support

from contracts.api import ConfusionCell, UserSums
from contracts.decision import SrmCheck

SRM_CONCENTRATION = 250.0
"""Concentration c of the Dirichlet mixture of the SRM test: its prior on the split is Beta(c s, c (1 - s)) around
the planned split s, of standard deviation about 0.5 / sqrt(c + 1) (0.032 at c = 250). The mixture is most
sensitive to skews of about that size once a few thousand users are in: against a 0.47/0.53 split over 72 hourly
looks of 85 users each (the A/B simulation's plan), the chance of flagging it at level 0.004 was 0.85 at
c = 250-500, 0.84 at c = 100-200, 0.79 at 1,000 and 0.71 at 3,000 (100,000 simulated paths of this test alone,
measured once). A larger c flags gross mismatches later: 60 users against none are flagged at c = 250, not at 300."""
SRM_USERS_SHARE = 0.8
"""Share of the plan's SRM level spent on the test of assigned users; the test of labelled users gets the rest. Two
always-valid tests at levels alpha_1 + alpha_2 = `srm_threshold` keep the chance that either ever flags a correct
split under `srm_threshold` over any number of looks (a union bound). Users get most of it: a broken assignment
shows there first, while the labelled-users test is there for labels missing not at random."""


def srm_levels(threshold: float) -> tuple[float, float]:
    """(users, labelled users) levels of the two SRM tests, summing to `threshold`, the level over both."""
    return threshold * SRM_USERS_SHARE, threshold * (1 - SRM_USERS_SHARE)


# --- cluster-robust ratio ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RatioStats:
    """An arm's accuracy over users and its cluster-robust variance."""

    users: int
    n: int
    """Scored requests (labelled answered + failed)."""
    x: int
    """Correct ones."""
    ratio: float
    variance: float
    """Delta-method variance of the ratio over users (Laplace-smoothed: positive when every answer is right)."""
    iid_variance: float
    """The variance if requests were independent: (x+1)/(n+2) (1 - (x+1)/(n+2)) / n."""

    @property
    def design_effect(self) -> float:
        """How much the users' correlation inflates the variance (1: independent requests)."""
        return self.variance / self.iid_variance


def ratio_stats(sums: UserSums) -> RatioStats:
    """Accuracy sum(x) / sum(n) of one arm and its delta-method variance over users.

    var(R) = K / (K - 1) * sum_i (x_i - R n_i)^2 / (sum n)^2, with sum_i (x_i - R n_i)^2 = Sxx - 2 R Snx + R^2 Snn
    (Deng et al. 2018). R is smoothed to (X + 1) / (N + 2) in the residuals, like the Agresti-Caffo adjustment, so
    the variance stays positive for an arm that is always right or always wrong.

    Args:
        sums: The arm's per-user sums as the router reports them.

    Returns:
        The ratio, its variance and the independent-requests variance.

    Raises:
        ValueError: No scored request, or sums that cannot come from per-user counts.
    """
    k, n, x = sums.users, sums.sum_n, sums.sum_x
    if k < 1 or n < 1:
        raise ValueError(f"an arm needs a scored request (got {k} users, {n} requests)")
    if not (0 <= x <= n and k <= n and sums.sum_nn >= n and 0 <= sums.sum_xx <= sums.sum_nn):
        raise ValueError(f"inconsistent user sums: {sums}")
    smoothed = (x + 1) / (n + 2)
    residual = sums.sum_xx - 2 * smoothed * sums.sum_nx + smoothed**2 * sums.sum_nn
    correction = k / (k - 1) if k > 1 else 2.0
    iid = smoothed * (1 - smoothed) / n
    variance = max(correction * residual / n**2, iid / k if k > 1 else iid)
    return RatioStats(users=k, n=n, x=x, ratio=x / n, variance=variance, iid_variance=iid)


def independent_sums(n: int, x: int) -> UserSums:
    """The user sums of `n` requests from `n` distinct users, `x` of them right (one request per user)."""
    return UserSums(users=n, sum_n=n, sum_x=x, sum_nn=n, sum_xx=x, sum_nx=x)


# --- sample size -------------------------------------------------------------------------------------------------


def absolute_mde(baseline: float, mde: float, *, relative: bool) -> float:
    """The lift in accuracy points the plan is powered for: `mde` itself, or `mde` x the baseline when relative."""
    return baseline * mde if relative else mde


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


def sequential_power(
    n: float, *, baseline: float, mde: float, alpha: float, tau: float, design_effect: float = 1.0
) -> float:
    """Probability that the confidence sequence lies entirely above 0 at a single look after `n` outcomes per arm.

    With v = deff (p1 q1 + p2 q2) / n and d_hat ~ N(mde, v), the CS excludes 0 from above when d_hat > r(v), its
    radius, so the power is Phi((mde - r(v)) / sqrt(v)). Only the correct direction counts.

    Args:
        n: Scored outcomes per arm (real-valued, for root finding).
        baseline: The champion's accuracy.
        mde: The true lift (absolute).
        alpha: Level of the confidence sequence.
        tau: Mixing standard deviation.
        design_effect: Variance inflation by the users' correlation (1: independent requests).

    Returns:
        The power in [0, 1].
    """
    p1, p2 = _check_rates(baseline, mde)
    v = design_effect * (p1 * (1 - p1) + p2 * (1 - p2)) / n
    return float(norm.cdf((mde - cs_radius(v, alpha=alpha, tau=tau)) / math.sqrt(v)))


def plan_sample_size(
    *, baseline: float, mde: float, alpha: float, power: float, tau: float | None = None, design_effect: float = 1.0
) -> tuple[int, int]:
    """Scored outcomes per arm the sequential test and a fixed-horizon test need.

    The sequential size is the smallest n at which the always-valid test, looked at once at n, promotes with
    probability >= `power` when the true lift is `mde`, with the variance inflated by `design_effect` (the
    users' correlation, estimated from the champion's recent traffic by `design_effect_of`). The fixed-horizon
    size is inflated by the same factor.

    Args:
        baseline: The champion's expected accuracy.
        mde: Minimum detectable effect (absolute lift).
        alpha: Level of the test (two-sided for the fixed horizon; total error of the CS).
        power: Target power.
        tau: Mixing standard deviation of the sequential test (default `mde`).
        design_effect: Variance inflation (>= 1 is applied; below 1 is taken as 1, the conservative side).

    Returns:
        (sequential_n_per_arm, fixed_horizon_n_per_arm).
    """
    tau = mde if tau is None else tau
    deff = max(1.0, design_effect)
    fixed = math.ceil(fixed_horizon_n(baseline=baseline, mde=mde, alpha=alpha, power=power) * deff)

    def gap(n: float) -> float:
        return sequential_power(n, baseline=baseline, mde=mde, alpha=alpha, tau=tau, design_effect=deff) - power

    if gap(1.0) >= 0:
        return 1, fixed
    low, high = 1.0, float(max(fixed, 2))
    while gap(high) < 0:
        low, high = high, high * 2
    sequential = math.ceil(brentq(gap, low, high, xtol=1e-6) - 1e-9)
    while gap(sequential) < 0:
        sequential += 1
    return sequential, fixed


def design_effect_of(sums: UserSums | None, *, minimum_users: int = 30) -> float | None:
    """The design effect seen in an arm's traffic (None with too few users to say)."""
    if sums is None or sums.users < minimum_users or sums.sum_n < 1:
        return None
    return ratio_stats(sums).design_effect


def _check_rates(baseline: float, mde: float) -> tuple[float, float]:
    # A champion already above 1 - mde leaves no room for a lift of mde: no plan can be powered for it.
    if not (0.0 < mde < 1.0 and 0.0 <= baseline and baseline + mde <= 1.0):
        raise ValueError(f"need 0 < mde < 1 and 0 <= baseline <= 1 - mde (got baseline {baseline}, mde {mde})")
    return baseline, baseline + mde


# --- the always-valid test of a difference -------------------------------------------------------------------------


@dataclass(frozen=True)
class SequentialResult:
    """The always-valid test of a difference d (challenger minus champion) after the counts seen so far."""

    d_hat: float
    lower: float
    """Lower end of the (1 - alpha) confidence sequence (clipped to [-1, 1])."""
    upper: float
    p_value: float
    """Always-valid p-value of d = d0: min(1, 1 / Lambda)."""
    log_lambda: float
    variance: float
    tau: float
    alpha: float
    d0: float = 0.0


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


def sequential_difference(d_hat: float, v: float, *, alpha: float, tau: float, d0: float = 0.0) -> SequentialResult:
    """Always-valid test and confidence sequence for a difference estimated as `d_hat` with variance `v`.

    With prior N(d0, tau^2) on the difference, the mixture likelihood ratio of the asymptotically normal estimate is
    a nonnegative martingale under d = d0, so P(Lambda ever >= 1/alpha) <= alpha at every look whatever the
    stopping rule. The confidence sequence is the set of d0 not rejected.

    Args:
        d_hat: The estimate.
        v: Its variance (> 0).
        alpha: Total error of the confidence sequence over all looks.
        tau: Mixing standard deviation (the scale of effect the test is most sensitive to).
        d0: The difference tested for the p-value.

    Returns:
        The estimate, the confidence sequence and the always-valid p-value.
    """
    if v <= 0 or tau <= 0:
        raise ValueError(f"variance and tau must be positive (got {v}, {tau})")
    radius = cs_radius(v, alpha=alpha, tau=tau)
    log_lambda = log_mixture_lr(d_hat, v, tau=tau, d0=d0)
    return SequentialResult(
        d_hat=d_hat,
        lower=max(-1.0, d_hat - radius),
        upper=min(1.0, d_hat + radius),
        p_value=math.exp(-log_lambda) if log_lambda > 0 else 1.0,
        log_lambda=log_lambda,
        variance=v,
        tau=tau,
        alpha=alpha,
        d0=d0,
    )


def log_one_sided_mixture(d: float, v: float, *, tau: float) -> float:
    """log of the one-sided (half-normal) mixture likelihood ratio against d = 0, for alternatives d < 0.

    With d_hat ~ N(d, v) and a half-normal prior of scale tau on d < 0, the mixture is
    2 sqrt(v / (v + tau^2)) exp(tau^2 d_hat^2 / (2 v (v + tau^2))) Phi(-d_hat tau / sqrt(v (v + tau^2))): a
    nonnegative supermartingale whenever the true d >= 0, so it proves d < 0 at level alpha over all looks once it
    reaches 1 / alpha. Against the two-sided mixture it spends all of alpha on one side.
    """
    t2 = tau * tau
    return (
        math.log(2.0)
        + 0.5 * math.log(v / (v + t2))
        + t2 * d * d / (2 * v * (v + t2))
        + _log_phi(-d * tau / math.sqrt(v * (v + t2)))
    )


def _log_phi(x: float) -> float:
    """log of the standard normal CDF (math.erfc: the mixture is evaluated thousands of times per simulation)."""
    if x < -30:
        return float(norm.logcdf(x))
    return math.log(0.5 * math.erfc(-x / math.sqrt(2.0)))


def one_sided_upper(estimate: float, v: float, *, alpha: float, tau: float) -> float:
    """Upper end of the always-valid one-sided (1 - alpha) confidence sequence of a mean estimated as `estimate` with
    variance `v`: the smallest level m whose "mean >= m" the half-normal mixture (`log_one_sided_mixture`) has not
    rejected. A mean proven below m is one with this upper end below m.
    """
    if v <= 0 or tau <= 0:
        raise ValueError(f"variance and tau must be positive (got {v}, {tau})")
    target = math.log(1 / alpha)
    sd = math.sqrt(v)

    def excess(z: float) -> float:
        return log_one_sided_mixture(-z * sd, v, tau=tau) - target

    high = 1.0
    while excess(high) < 0:
        high *= 2
    return estimate + brentq(excess, 0.0, high, xtol=1e-10) * sd


def ratio_difference_test(
    a: UserSums, b: UserSums, *, alpha: float, tau: float, d0: float = 0.0
) -> tuple[SequentialResult, RatioStats, RatioStats]:
    """The always-valid test of accuracy_b - accuracy_a with cluster-robust (delta-method) variances per arm."""
    sa, sb = ratio_stats(a), ratio_stats(b)
    return sequential_difference(sb.ratio - sa.ratio, sa.variance + sb.variance, alpha=alpha, tau=tau, d0=d0), sa, sb


def diff_variance(n_a: int, x_a: int, n_b: int, x_b: int) -> float:
    """Unpooled variance of p_b - p_a of independent trials, with Laplace-smoothed proportions (x + 1) / (n + 2)."""
    p_a, p_b = (x_a + 1) / (n_a + 2), (x_b + 1) / (n_b + 2)
    return p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b


def proportion_difference_test(
    n_a: int, x_a: int, n_b: int, x_b: int, *, alpha: float, tau: float, d0: float = 0.0
) -> SequentialResult:
    """The always-valid test of p_b - p_a for independent trials (x successes of n per arm)."""
    if n_a < 1 or n_b < 1:
        raise ValueError(f"both arms need at least one outcome (got {n_a} and {n_b})")
    if not (0 <= x_a <= n_a and 0 <= x_b <= n_b):
        raise ValueError(f"successes must lie in [0, n] (got {x_a}/{n_a} and {x_b}/{n_b})")
    return sequential_difference(x_b / n_b - x_a / n_a, diff_variance(n_a, x_a, n_b, x_b), alpha=alpha, tau=tau, d0=d0)


# --- sample ratio mismatch ------------------------------------------------------------------------------------


def srm_test(
    counts: tuple[int, int], split_b: float, threshold: float = 0.001, *, concentration: float = SRM_CONCENTRATION
) -> SrmCheck:
    """Sample ratio mismatch, always valid under peeking (Lindon and Malek 2022, two arms).

    Under the planned split s the counts follow a binomial sequence; the mixture over the split with a Beta(c s,
    c (1 - s)) prior gives the Bayes factor BF = B(c s + n_b, c (1 - s) + n_a) / B(c s, c (1 - s)) / ((1 - s)^n_a
    s^n_b), a nonnegative martingale with mean 1 under the planned split. Mismatch when BF >= 1 / threshold: the
    chance that ever happens under the planned split, at any number of looks, is at most `threshold`.

    Args:
        counts: (champion, challenger) units assigned (users, or labelled users).
        split_b: The challenger's planned share (strictly between 0 and 1).
        threshold: Level of the test over all looks.
        concentration: c, the strength of the prior around the planned split.

    Returns:
        The test result.
    """
    n_a, n_b = int(counts[0]), int(counts[1])
    testable = 0.0 < split_b < 1.0  # a split of 0 or 1 plans no ratio to test
    log_bf, p_value = 0.0, 1.0
    if testable:
        alpha_b, alpha_a = concentration * split_b, concentration * (1 - split_b)
        log_bf = float(
            betaln(alpha_b + n_b, alpha_a + n_a)
            - betaln(alpha_b, alpha_a)
            - n_a * math.log(1 - split_b)
            - n_b * math.log(split_b)
        )
        p_value = min(1.0, math.exp(-log_bf)) if log_bf > -700 else 1.0
    return SrmCheck(
        observed=(n_a, n_b),
        planned_share=split_b,
        log_bayes_factor=log_bf,
        p_value=p_value,
        threshold=threshold,
        mismatch=testable and log_bf >= math.log(1 / threshold),
    )


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


def plain_chi2(n_a: int, x_a: int, n_b: int, x_b: int) -> float:
    """P-value of the chi-squared test of the 2x2 table (correct/incorrect by arm), Yates-corrected.

    Valid at one pre-planned look only; reported next to the always-valid p-value, never decided on.
    Returns 1.0 when the table has nothing to test (an empty arm, or both arms always right or always wrong).
    """
    table = [[x_a, n_a - x_a], [x_b, n_b - x_b]]
    if min(n_a, n_b, x_a + x_b, n_a + n_b - x_a - x_b) == 0:
        return 1.0
    return float(chi2_contingency(table)[1])
