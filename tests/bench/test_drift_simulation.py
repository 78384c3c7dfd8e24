"""The CI-sized drift simulation (the benchmark's harness, fixed seeds): calibrated checks alarm at about the rate the
budget allows on no-drift windows, and a 0.5 SD shift of one column is caught within 3 checks and attributed."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from bench.drift_simulation import IrisLike, Wide, alarm_rate, make_checker, shift_run
from flows.settings import FlowSettings


@pytest.mark.parametrize(
    ("gen", "reference_rows", "references", "checks"),
    [(IrisLike(), 150, 12, 100), (Wide(), 10_000, 2, 600)],
    ids=["iris-like", "wide"],
)
def test_no_drift_checks_alarm_within_the_calibrated_rate(gen, reference_rows: int, references: int, checks: int):
    # A 150-row reference is itself a noisy sample: one reference alarms far more than another, so the rate is
    # averaged over many references (the calibration bounds the average, not every reference's own rate).
    alarmed, checks, target = alarm_rate(gen, reference_rows, references=references, checks=checks, seed=7)
    # Not significantly above the target per-check rate (a one-sided exact test at 0.1%): the budget holds.
    assert binomtest(alarmed, checks, target, alternative="greater").pvalue > 1e-3, (alarmed, checks, target)


@pytest.mark.parametrize(("gen", "reference_rows"), [(IrisLike(), 150), (Wide(), 10_000)], ids=["iris-like", "wide"])
def test_a_half_sd_shift_is_detected_within_3_checks_and_attributed(gen, reference_rows: int) -> None:
    settings = FlowSettings(_env_file=None)
    rng = np.random.default_rng(8)
    checker = make_checker(gen, rng, reference_rows, settings)
    runs = [shift_run(gen, checker, rng, settings.drift_consecutive, column=i % len(gen.columns)) for i in range(40)]
    detected = sum(hit for hit, _ in runs)
    attributed = sum(right for _, right in runs)
    assert binomtest(detected, 40).proportion_ci(0.99).low > 0.8, detected
    assert attributed == detected
