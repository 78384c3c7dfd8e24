"""Cluster-robust variance, plans that can be met (design effect, relative MDE, feasibility) and the watch."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from scipy.stats import binomtest

from contracts.api import ArmOutcome, UserSums
from contracts.decision import WatchPromise
from contracts.registry import watch_from_tags, watch_tags
from flows.lib.ab_plan import PlanInputs, make_plan
from flows.lib.ab_policy import WATCH_KEPT_SHARE, watch
from flows.lib.ab_stats import cs_radius, one_sided_upper, plan_sample_size, ratio_stats

START = datetime(2024, 6, 1, 12, tzinfo=UTC)


def sums_of(n: np.ndarray, x: np.ndarray) -> UserSums:
    return UserSums(
        users=len(n), sum_n=int(n.sum()), sum_x=int(x.sum()), sum_nn=int((n * n).sum()),
        sum_xx=int((x * x).sum()), sum_nx=int((n * x).sum()),
    )  # fmt: skip


def users(rng: np.random.Generator, count: int, *, p: float, icc: float, mean_requests: float = 5.0):
    """Users with geometric request counts and a per-user accuracy drawn from a Beta of the given ICC."""
    n = rng.geometric(1 / mean_requests, size=count)
    if icc > 0:
        k = (1 - icc) / icc
        acc = rng.beta(p * k, (1 - p) * k, size=count)
    else:
        acc = np.full(count, p)
    return n, rng.binomial(n, acc)


@pytest.mark.parametrize("icc", [0.0, 0.3])
def test_the_delta_method_variance_matches_the_spread_over_repeated_samples(icc):
    rng = np.random.default_rng(1)
    ratios, variances = [], []
    for _ in range(400):
        n, x = users(rng, 400, p=0.8, icc=icc)
        stats = ratio_stats(sums_of(n, x))
        ratios.append(stats.ratio)
        variances.append(stats.variance)
    # The mean delta-method variance is the empirical variance of the ratio (within sampling error of both).
    assert np.mean(variances) == pytest.approx(np.var(ratios, ddof=1), rel=0.2)
    deff = np.mean(variances) / np.mean([0.8 * 0.2 / 2000])
    assert (deff < 1.3) if icc == 0 else (deff > 1.8)


def test_the_plan_inflates_its_sample_by_the_design_effect_of_the_champions_traffic():
    rng = np.random.default_rng(2)
    n, x = users(rng, 3000, p=0.8, icc=0.2)
    champion = ArmOutcome(
        arm="champion", model_version="1", requests=int(n.sum()), labelled=int(n.sum()), correct=int(x.sum()),
        incorrect=int(n.sum() - x.sum()), user_sums=sums_of(n, x), first_request_at=START,
        last_request_at=START + timedelta(hours=10),
    )  # fmt: skip
    inputs = PlanInputs(
        champion_version="1", challenger_version="2", baseline=0.8, alpha=0.05, power=0.8, mde=0.05,
        mde_relative=False, ab_split_b=0.5, max_duration_hours=72.0, srm_threshold=0.001, guardrail_error_margin=0.005,
        guardrail_error_margin_relative=0.25, guardrail_latency_margin=0.5, guardrail_latency_slack_ms=20.0,
        watch_hours=72.0,
    )  # fmt: skip
    plan = make_plan(inputs, champion)
    deff = ratio_stats(champion.user_sums).design_effect
    assert 1.5 < plan.design_effect == pytest.approx(deff)
    assert "estimated from the champion's recent traffic" in plan.design_effect_source
    assert (
        plan.min_samples_per_arm
        == plan_sample_size(baseline=0.8, mde=0.05, alpha=0.05, power=0.8, design_effect=deff)[0]
        > plan_sample_size(baseline=0.8, mde=0.05, alpha=0.05, power=0.8)[0]
    )
    # ~1500 requests/h, all labelled, half to each arm: the plan fits in 72 h.
    assert plan.feasible and 0 < plan.expected_hours < 72 and "within the maximum" in plan.feasibility
    # A tenth of the users labelled over 200 h and a 5% split: it does not.
    fields = {f: getattr(champion, f) for f in champion.__struct_fields__}
    sparse = ArmOutcome(
        **fields | {"user_sums": sums_of(n[:300], x[:300]), "last_request_at": START + timedelta(hours=200)}
    )
    late = make_plan(PlanInputs(**{**inputs.__dict__, "ab_split_b": 0.05}), sparse)
    assert not late.feasible and "OVER the maximum" in late.feasibility and late.expected_hours > 72
    # No traffic known: no design effect, feasibility unchecked, said so.
    blind = make_plan(inputs, None)
    assert blind.design_effect == 1.0 and blind.feasible and "not checked" in blind.feasibility


def test_a_relative_mde_is_a_share_of_the_baseline_and_an_unreachable_one_is_refused():
    inputs = PlanInputs(
        champion_version="1", challenger_version="2", baseline=0.9, alpha=0.05, power=0.8, mde=0.05,
        mde_relative=True, ab_split_b=0.5, max_duration_hours=72.0, srm_threshold=0.001, guardrail_error_margin=0.005,
        guardrail_error_margin_relative=0.25, guardrail_latency_margin=0.5, guardrail_latency_slack_ms=20.0,
        watch_hours=0.0,
    )  # fmt: skip
    plan = make_plan(inputs, None)
    assert plan.mde == pytest.approx(0.045) and plan.mde_relative == 0.05
    with pytest.raises(ValueError, match="does not fit under 100% accuracy"):
        make_plan(PlanInputs(**{**inputs.__dict__, "mde": 0.2}), None)


def promise(**changes) -> WatchPromise:
    values = dict(
        version="2", previous_version="1", expected_accuracy=0.85, previous_accuracy=0.80, tolerance=0.01,
        period_hours=72.0, alpha=0.05, tau=0.05, promoted_at=START, loop_id="loop-1",
    )  # fmt: skip
    return WatchPromise(**(values | changes))


def test_the_watch_rolls_back_a_champion_proven_below_its_promise_and_holds_one_that_keeps_it():
    rng = np.random.default_rng(4)
    assert promise().threshold == pytest.approx(0.84)
    assert watch(promise(), None, 1.0).verdict == "WATCHING"
    n, x = users(rng, 2000, p=0.80, icc=0.1)  # the lucky promotion: really at the old level
    regressed = watch(promise(), sums_of(n, x), 10.0)
    assert regressed.verdict == "REGRESSION" and regressed.cs_upper < 0.84
    n, x = users(rng, 2000, p=0.85, icc=0.1)
    kept = watch(promise(), sums_of(n, x), 10.0)
    assert kept.verdict == "HOLDS" and kept.cs_lower is None and 0.85 <= kept.cs_upper
    assert watch(promise(), sums_of(n, x), 80.0).verdict == "DONE"


def test_the_one_sided_bound_is_always_valid_and_tighter_than_the_two_sided_one():
    """A mean exactly at the threshold is proven below it at most alpha of the time over 60 looks."""
    rng = np.random.default_rng(6)
    experiments, looks, per_look, p = 1000, 60, 80, 0.8
    hits = rng.binomial(per_look, p, size=(experiments, looks)).cumsum(axis=1)
    n = per_look * np.arange(1, looks + 1)
    proven = 0
    for row in hits:
        proven += any(
            one_sided_upper(x / m, p * (1 - p) / m, alpha=0.05, tau=0.02) < p for x, m in zip(row, n, strict=True)
        )
    assert binomtest(proven, experiments).proportion_ci(0.95, method="exact").high < 0.05 * 1.2
    v = 1e-5
    assert one_sided_upper(0.8, v, alpha=0.05, tau=0.01) - 0.8 < cs_radius(v, alpha=0.05, tau=0.01)


def test_a_promise_keeps_a_share_of_the_estimated_lift():
    """Threshold = previous estimate + the kept share of the estimated lift (the whole estimate is too high a bar
    after the selection of a promotion), never below the previous champion's estimate."""
    lifted = promise(tolerance=(1 - WATCH_KEPT_SHARE) * 0.05)
    assert lifted.threshold == pytest.approx(0.80 + WATCH_KEPT_SHARE * 0.05)
    assert promise(tolerance=1.0).threshold == 0.80


def test_the_promise_round_trips_through_version_tags():
    tags = watch_tags(promise())
    assert tags["driftloop.watch_status"] == "watching"
    assert all(isinstance(v, str) for v in tags.values())
    assert watch_from_tags(tags) == promise()
    assert watch_from_tags({"other": "x"}) is None
