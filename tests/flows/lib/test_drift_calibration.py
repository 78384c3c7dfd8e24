"""The calibration's two safeguards: a threshold that is an upper confidence bound of the null quantile, and a null
that splits a large reference so that its own sampling noise is in it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom, binomtest, ks_2samp

from flows.lib.drift_calibration import (
    _null_statistics,
    _split_rows,
    allowed_exceedances,
    calibrate,
    check_alarm_rate,
    min_resamples,
)
from flows.lib.drift_stats import KS_DISTANCE, TVD, tvd

P = check_alarm_rate(0.05, 720, 2)


@pytest.mark.parametrize("resamples", [500, 2000, 5000])
def test_allowed_exceedances_is_the_largest_count_the_binomial_bound_allows(resamples: int) -> None:
    j = allowed_exceedances(resamples, P, 0.95)
    assert binom.cdf(j, resamples, P) <= 0.05 < binom.cdf(j + 1, resamples, P)
    assert allowed_exceedances(100, P, 0.95) == -1 and min_resamples(P, 0.95) == 352


def test_the_order_statistic_bounds_the_tail_with_the_stated_confidence() -> None:
    """On a uniform null the true exceedance of a threshold is 1 - threshold: the upper confidence bound leaves it
    above the target in at most 5% of calibrations, the plain quantile in about half."""
    rng = np.random.default_rng(3)
    n, trials = 2000, 400
    ordered = np.sort(rng.random((trials, n)), axis=1)
    bound = 1 - ordered[:, n - 1 - allowed_exceedances(n, P, 0.95)]
    plain = 1 - np.quantile(ordered, 1 - P, axis=1, method="higher")
    assert binomtest(int((bound > P).sum()), trials, 0.05, alternative="greater").pvalue > 1e-3
    assert 0.3 < np.mean(plain > P) < 0.7


def test_a_large_reference_is_split_and_each_window_is_compared_with_the_other_rows() -> None:
    rng = np.random.default_rng(4)
    n, m = 6000, 300
    frame = pd.DataFrame({"x": np.round(rng.normal(size=n), 2), "k": rng.choice(list("abc"), n, p=[0.5, 0.3, 0.2])})
    kinds, methods = {"x": "numerical", "k": "categorical"}, {"x": KS_DISTANCE, "k": TVD}
    nulls, split = _null_statistics(frame, kinds, methods, m, 100, seed=9)
    assert split
    rows = _split_rows(np.random.default_rng(9), n, 100, m)
    for i in range(5):
        assert len(set(rows[i])) == m
        rest = frame.drop(index=rows[i])
        window = frame.iloc[rows[i]]
        assert nulls["x"][i] == pytest.approx(ks_2samp(window["x"], rest["x"]).statistic)
        assert nulls["k"][i] == pytest.approx(tvd(rest["k"], window["k"]))


def test_a_calibration_records_its_confidence_or_says_why_it_has_less() -> None:
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"x": rng.normal(size=3000)})
    args = dict(kinds={"x": "numerical"}, window_rows=100, budget=0.05, period_checks=720, consecutive=2)
    cal = calibrate(frame, ["x"], resamples=2000, **args)
    assert (cal.confidence, cal.allowed_exceedances, cal.fixed_reference) == (0.95, 10, True)
    assert cal.resampled_alarm_rate <= cal.allowed_exceedances / cal.resamples
    few = calibrate(frame, ["x"], resamples=200, **args)
    assert few.confidence < 0.95 and any("too few" in note for note in few.notes)
