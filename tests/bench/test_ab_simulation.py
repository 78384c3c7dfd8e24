"""Small but meaningful simulations of the A/B decision under hourly looks (the benchmark's harness, fixed seeds).

Each assertion is a binomial test at a strict level rather than a bare threshold on a few hundred experiments,
so it says something true about the rate and does not hinge on the luck of the seed.
"""

import pytest
from scipy.stats import binomtest

from bench.ab_simulation import SimResult, simulate
from flows.lib.experiment import plan_sample_size

BASELINE, MDE, ALPHA, POWER = 0.80, 0.05, 0.05, 0.8
PLANNED, _ = plan_sample_size(baseline=BASELINE, mde=MDE, alpha=ALPHA, power=POWER)
PER_LOOK = -(-PLANNED // 10)  # a look every ~1/10 of the planned sample size, up to 1.5 times it
SETTING = {"n_per_look_per_arm": PER_LOOK, "looks": 15, "alpha": ALPHA, "mde": MDE, "power": POWER}


@pytest.fixture(scope="module")
def aa_sequential() -> SimResult:
    return simulate(experiments=400, p_champion=BASELINE, p_challenger=BASELINE, seed=11, **SETTING)


@pytest.fixture(scope="module")
def aa_plain_chi2() -> SimResult:
    return simulate(
        experiments=400, p_champion=BASELINE, p_challenger=BASELINE, seed=11, method="plain_chi2", **SETTING
    )


def test_sequential_false_promotions_stay_below_alpha_over_15_looks(aa_sequential):
    promoted = aa_sequential.count("PROMOTE")
    # The exact 99% upper bound of the false promotion rate is below alpha: the data show it is <= alpha.
    upper = binomtest(promoted, aa_sequential.experiments).proportion_ci(0.99, method="exact").high
    assert upper <= ALPHA, f"{promoted}/{aa_sequential.experiments} false promotions, 99% upper bound {upper:.4f}"
    # Every experiment went through decide() to its end: a decision at some look, at the latest the last one.
    assert (aa_sequential.stop_look <= 15).all()
    assert aa_sequential.count("ROLLBACK", rule="max_duration") > 0.9 * aa_sequential.experiments


def test_plain_chi2_at_every_look_promotes_clearly_more_on_the_same_data(aa_sequential, aa_plain_chi2):
    naive = aa_plain_chi2.decisions == "PROMOTE"
    safe = aa_sequential.decisions == "PROMOTE"
    only_naive, only_safe = int((naive & ~safe).sum()), int((safe & ~naive).sum())
    # McNemar's exact test on the paired experiments (same seed, same counts).
    assert binomtest(only_naive, only_naive + only_safe, 0.5, alternative="greater").pvalue < 1e-4
    # ... and the naive rule exceeds alpha itself (two-sided chi2, promotions are one side of it).
    assert binomtest(int(naive.sum()), aa_plain_chi2.experiments, ALPHA, alternative="greater").pvalue < 0.01


def test_a_lift_of_mde_is_promoted_by_the_planned_sample_size_with_the_planned_power():
    result = simulate(experiments=300, p_champion=BASELINE, p_challenger=BASELINE + MDE, seed=12, **SETTING)
    plan_look = -(-PLANNED // PER_LOOK)
    promoted = result.count("PROMOTE", by_look=plan_look)
    # Not significantly below the planned power (one-sided, 1%); with 300 experiments that allows ~0.74.
    assert binomtest(promoted, result.experiments, POWER, alternative="less").pvalue > 0.01
    assert result.count("ROLLBACK", rule="worse") == 0


def test_an_injected_sample_ratio_mismatch_is_flagged_invalid():
    result = simulate(experiments=400, p_champion=BASELINE, p_challenger=BASELINE, srm_split=0.47, seed=13, **SETTING)
    invalid = result.count("INVALID")
    # Not significantly below 99% (one-sided, 1%): at most a handful stop before the mismatch is detectable.
    assert binomtest(invalid, result.experiments, 0.99, alternative="less").pvalue > 0.01, f"{invalid}/400 INVALID"
    assert result.count("PROMOTE") <= 2
