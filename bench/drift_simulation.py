"""Simulated months of hourly drift checks: spurious episodes per month, and how fast a 0.5 SD shift is caught.

Two datasets: iris-like (4 correlated, rounded columns from a 3-class Gaussian mixture fitted to iris; reference 150
rows as the demo has) and a 20-column one (correlated Gaussian, reference 100,000 rows, and 10,000 rows: the default
`DRIFTLOOP_DRIFT_REFERENCE_ROWS`). Each reference is drawn fresh from the generator, calibrated exactly as a registered
version is (`flows.lib.drift_calibration.calibrate_version`, settings' defaults: 5% per 720 checks, 2 alarms in a row,
2,000 resamples, 95% confidence), then:

- no drift: `months` x 720 hourly checks of fresh 300-row windows; a month is spurious when any column reaches 2
  alarms in a row (the default retrain severity, `warning`, starts a retrain then);
- shift: a 0.5 SD shift of one column from one check on; detected when that column reaches 2 in a row within the first
  3 checks, attributed when no other column has by then.

Besides the spurious months, every no-drift check is counted: the share that alarmed on any column, against the
calibrated per-check rate, and the spurious-month probability that share implies (a much tighter figure than the
months themselves, of which a 2-core machine can simulate only hundreds).

Each check applies the calibrated per-column thresholds to the same statistic Evidently computes in the flow (K-S D,
`flows.lib.drift_stats`; here evaluated against the presorted reference for speed, checked equal to scipy's on the first
windows) and the data-quality out-of-range rule (`flows.lib.data_quality`, same binomial test). The Evidently path
itself is covered by the scenario tests; it costs about 0.3 s a check, too slow for tens of thousands of checks.

Run: `uv run python -m bench.drift_simulation` (full size; `--jobs 2` runs the scenarios in two processes, `--scale`
multiplies the simulated months) or with `--quick` (a small run, not written to the results).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest, ks_2samp

from flows.lib.data import IRIS_FEATURES, IRIS_TARGET, load_dataset
from flows.lib.data_quality import QualityRules, range_p_value
from flows.lib.drift_calibration import VersionCalibration, calibrate_version, no_episode_probability
from flows.settings import FlowSettings

RESULTS = Path(__file__).resolve().parent / "results" / "drift_simulation.json"
CHECKS_PER_MONTH = 720
WINDOW = 300
SHIFT_SD = 0.5
WITHIN = 3


class IrisLike:
    """A 3-class Gaussian mixture with iris's per-class means and covariances, rounded to 0.1 cm like iris."""

    columns = list(IRIS_FEATURES)

    def __init__(self) -> None:
        iris = load_dataset("iris", IRIS_TARGET)
        groups = [g[IRIS_FEATURES].to_numpy() for _, g in iris.groupby(IRIS_TARGET)]
        self.means = [g.mean(axis=0) for g in groups]
        self.covs = [np.cov(g, rowvar=False) for g in groups]
        self.sd = iris[IRIS_FEATURES].std().to_numpy()

    def draw(self, rng: np.random.Generator, rows: int) -> np.ndarray:
        kinds = rng.integers(0, 3, rows)
        out = np.empty((rows, 4))
        for k in range(3):
            mask = kinds == k
            out[mask] = rng.multivariate_normal(self.means[k], self.covs[k], mask.sum())
        return np.round(np.clip(out, 0.1, None), 1)


class Wide:
    """20 correlated Gaussian columns (an AR(1) correlation of 0.5 between neighbours)."""

    columns = [f"x{i:02d}" for i in range(20)]

    def __init__(self) -> None:
        idx = np.arange(20)
        self.chol = np.linalg.cholesky(0.5 ** np.abs(idx[:, None] - idx[None, :]))
        self.sd = np.ones(20)

    def draw(self, rng: np.random.Generator, rows: int) -> np.ndarray:
        return rng.standard_normal((rows, 20)) @ self.chol.T


def ks_sorted(sorted_ref: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """K-S D of each window (a row of `windows`) against a presorted reference (ties in both handled), equal to
    `ks_2samp(...).statistic`."""
    w = np.sort(windows, axis=1)
    b, n = w.shape
    idx = np.broadcast_to(np.arange(n), (b, n))
    # Window values <= / < each value: the end and the start of its run of ties in the sorted row.
    last = np.ones((b, n), dtype=bool)
    last[:, :-1] = w[:, :-1] != w[:, 1:]
    upto = np.minimum.accumulate(np.where(last, idx, n)[:, ::-1], axis=1)[:, ::-1] + 1
    first = np.ones((b, n), dtype=bool)
    first[:, 1:] = w[:, 1:] != w[:, :-1]
    below = np.maximum.accumulate(np.where(first, idx, 0), axis=1)
    size = len(sorted_ref)
    right = np.searchsorted(sorted_ref, w, side="right") / size
    left = np.searchsorted(sorted_ref, w, side="left") / size
    return np.maximum(np.abs(right - upto / n), np.abs(left - below / n)).max(axis=1)


@dataclass
class Checker:
    """One reference with its calibration: the findings of a window."""

    reference: np.ndarray
    calibrated: VersionCalibration
    rules: QualityRules

    def __post_init__(self) -> None:
        self.sorted = np.sort(self.reference, axis=0)
        cal = self.calibrated.for_rows(WINDOW)
        self.thresholds = np.array([c.threshold for c in cal.columns])
        self.low, self.high = self.sorted[0], self.sorted[-1]
        n = len(self.reference)
        # The smallest out-of-range count the quality rule flags: share above tolerance and its p below alpha.
        self.range_floor = next(
            k
            for k in range(int(np.floor(self.rules.range_tolerance * WINDOW)) + 1, WINDOW + 2)
            if k > WINDOW or range_p_value(k, WINDOW, n) < self.rules.alpha
        )
        self.verified = 0

    def alarms(self, windows: np.ndarray) -> np.ndarray:
        """Alarms (windows x columns) of a stack of windows (windows x rows x columns)."""
        d = np.stack([ks_sorted(self.sorted[:, j], windows[:, :, j]) for j in range(windows.shape[2])], axis=1)
        for window, got in zip(windows[: max(0, 3 - self.verified)], d, strict=False):
            # The fast statistic is scipy's, checked on the first windows.
            expected = [ks_2samp(self.reference[:, j], window[:, j]).statistic for j in range(window.shape[1])]
            assert np.allclose(got, expected), (got, expected)
            self.verified += 1
        outside = ((windows < self.low) | (windows > self.high)).sum(axis=1)
        quality = outside >= self.range_floor
        return (d > self.thresholds) | quality


def make_checker(gen, rng: np.random.Generator, reference_rows: int, settings: FlowSettings) -> Checker:
    data = gen.draw(rng, reference_rows)
    frame = pd.DataFrame(data, columns=gen.columns).assign(y="a")
    calibrated = calibrate_version(
        frame,
        target="y",
        predictions=[],
        holdout_accuracy=None,
        min_rows=WINDOW,
        window_rows=WINDOW,
        budget=settings.drift_budget,
        period_checks=settings.drift_budget_checks,
        consecutive=settings.drift_consecutive,
        resamples=settings.drift_calibration_resamples,
        seed=int(rng.integers(1 << 31)),
    )
    return Checker(data, calibrated, QualityRules(range_tolerance=settings.drift_range_tolerance))


def windows(gen, rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` fresh windows (windows x rows x columns)."""
    return gen.draw(rng, count * WINDOW).reshape(count, WINDOW, len(gen.columns))


def spurious_month(gen, checker: Checker, rng: np.random.Generator, k: int) -> tuple[bool, int]:
    """(a spurious episode happened, checks that alarmed on any column) over a month of no-drift checks."""
    alarms = np.concatenate([checker.alarms(windows(gen, rng, 120)) for _ in range(CHECKS_PER_MONTH // 120)])
    streak = np.zeros(len(gen.columns), dtype=int)
    episode = False
    for row in alarms:
        streak = np.where(row, streak + 1, 0)
        episode = episode or bool((streak >= k).any())
    return episode, int(alarms.any(axis=1).sum())


def shift_run(gen, checker: Checker, rng: np.random.Generator, k: int, column: int) -> tuple[bool, bool]:
    """(detected within WITHIN checks, attributed to the shifted column only)."""
    streak = np.zeros(len(gen.columns), dtype=int)
    shifted = windows(gen, rng, WITHIN)
    shifted[:, :, column] += SHIFT_SD * gen.sd[column]
    for alarms in checker.alarms(shifted):
        streak = np.where(alarms, streak + 1, 0)
        if streak[column] >= k:
            others = np.delete(streak, column)
            return True, not (others >= k).any()
    return False, False


def alarm_rate(gen, reference_rows: int, references: int, checks: int, seed: int) -> tuple[int, int, float]:
    """No-drift checks that alarm on any column, out of all, and the calibrations' target per-check rate."""
    settings = FlowSettings(_env_file=None)
    rng = np.random.default_rng(seed)
    alarmed = 0
    for _ in range(references):
        checker = make_checker(gen, rng, reference_rows, settings)
        alarmed += int(checker.alarms(windows(gen, rng, checks)).any(axis=1).sum())
    return alarmed, references * checks, checker.calibrated.for_rows(WINDOW).check_alarm_rate


def rate(k: int, n: int) -> dict:
    ci = binomtest(k, n).proportion_ci(method="wilson")
    return {"k": k, "n": n, "rate": k / n, "ci_low": ci.low, "ci_high": ci.high}


def scenario(name: str, gen, reference_rows: int, references: int, months: int, shifts: int, seed: int) -> dict:
    settings = FlowSettings(_env_file=None)
    rng = np.random.default_rng(seed)
    k = settings.drift_consecutive
    spurious = detected = attributed = total_shifts = alarmed = 0
    thresholds, allowed = [], []
    started, load_before = time.perf_counter(), os.getloadavg()
    for _ in range(references):
        checker = make_checker(gen, rng, reference_rows, settings)
        thresholds.append(checker.thresholds.tolist())
        allowed.append(checker.calibrated.for_rows(WINDOW).resampled_alarm_rate)
        for _ in range(months):
            episode, alarms = spurious_month(gen, checker, rng, k)
            spurious += episode
            alarmed += alarms
        for _ in range(shifts):
            column = int(rng.integers(len(gen.columns)))
            hit, right = shift_run(gen, checker, rng, k, column)
            detected += hit
            attributed += right
            total_shifts += 1
    cal = checker.calibrated.for_rows(WINDOW)
    checks = references * months * CHECKS_PER_MONTH
    return {
        "scenario": name,
        "reference_rows": reference_rows,
        "columns": len(gen.columns),
        "window_rows": WINDOW,
        "references": references,
        "months": references * months,
        "spurious_months": rate(spurious, references * months) | {"target": "<= 0.05"},
        "alarming_checks": rate(alarmed, checks)
        | {"target": f"<= {cal.check_alarm_rate:.4f} (the budget's per-check rate)"},
        # What the calibration allows on its own resamples (the upper confidence bound leaves this margin).
        "resampled_alarm_rate": float(np.mean(allowed)),
        "calibration_confidence": cal.confidence,
        "resamples": cal.resamples,
        # Counted at check level (any column twice in a row), as the calibration counts it; the policy needs the
        # same column twice, so this overstates the month risk the spurious months measure.
        "implied_spurious_month": 1 - no_episode_probability(alarmed / checks, CHECKS_PER_MONTH, k),
        "implied_spurious_month_ci": [
            1 - no_episode_probability(bound, CHECKS_PER_MONTH, k)
            for bound in (rate(alarmed, checks)["ci_low"], rate(alarmed, checks)["ci_high"])
        ],
        "shift_detected_within_3": rate(detected, total_shifts) | {"target": ">= 0.95"},
        "shift_attributed": rate(attributed, total_shifts),
        "threshold_range": [float(np.min(thresholds)), float(np.max(thresholds))],
        "seconds": time.perf_counter() - started,
        "load_average_start": load_before,
        "load_average_end": os.getloadavg(),
    }


SCENARIOS = {
    # name: (generator, reference rows, references, months per reference, shift runs per reference)
    "iris-like": (IrisLike, 150, 40, 10, 20),
    "20 columns": (Wide, 100_000, 8, 25, 40),
    "20 columns, 10k reference": (Wide, 10_000, 8, 25, 40),
}
"""The full run. The 10,000-row reference is the default `DRIFTLOOP_DRIFT_REFERENCE_ROWS`."""
QUICK = {"iris-like": (IrisLike, 150, 2, 1, 20), "20 columns": (Wide, 20_000, 1, 1, 20)}


def _scenario(args: tuple) -> dict:
    name, (gen, ref, refs, months, shifts), seed = args
    row = scenario(name, gen(), ref, refs, months, shifts, seed)
    print(json.dumps(row), flush=True)
    return row


def run(quick: bool, seed: int = 20261127, jobs: int = 1, scale: float = 1.0) -> dict:
    plan = QUICK if quick else SCENARIOS
    tasks = [
        (name, (gen, ref, refs, max(1, round(months * scale)), shifts), seed + i)
        for i, (name, (gen, ref, refs, months, shifts)) in enumerate(plan.items())
    ]
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs) as pool:
            rows = list(pool.map(_scenario, tasks))
    else:
        rows = [_scenario(task) for task in tasks]
    return {"rows": rows, "seed": seed, "quick": quick, "jobs": jobs, "scale": scale}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the CI-sized run (not written to results)")
    parser.add_argument("--jobs", type=int, default=1, choices=(1, 2), help="scenarios run in this many processes")
    parser.add_argument("--scale", type=float, default=1.0, help="simulated months times this (a shorter run)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = run(args.quick, jobs=args.jobs, scale=args.scale)
    options = (" --quick" if args.quick else "") + (f" --jobs {args.jobs}" if args.jobs > 1 else "")
    options += f" --scale {args.scale:g}" if args.scale != 1 else ""
    result |= {
        "command": "uv run python -m bench.drift_simulation" + options,
        "argv": shlex.join(sys.argv),
        "wall_seconds": time.perf_counter() - started,
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    for row in result["rows"]:
        s, d, a = row["spurious_months"], row["shift_detected_within_3"], row["shift_attributed"]
        c = row["alarming_checks"]
        print(
            f"{row['scenario']}: spurious months {s['k']}/{s['n']} = {s['rate']:.3f} "
            f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}]; alarming checks {c['k']}/{c['n']} = {c['rate']:.4f} "
            f"[{c['ci_low']:.4f}, {c['ci_high']:.4f}] (budget {c['target']}); "
            f"0.5 SD shift detected within 3 checks {d['k']}/{d['n']} = {d['rate']:.3f} [{d['ci_low']:.3f}, "
            f"{d['ci_high']:.3f}], attributed {a['rate']:.3f} ({row['seconds']:.0f} s, load "
            f"{row['load_average_start'][0]:.1f}-{row['load_average_end'][0]:.1f})"
        )
    if not args.quick:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
