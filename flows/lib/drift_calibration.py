"""Per-column drift thresholds calibrated against a false-alarm budget by resampling the reference.

The budget is "at most `budget` probability of a spurious drift episode per period of `period_checks` checks" (for
example 5% per 30 days of hourly checks: 720 checks). An episode needs `consecutive` alarms in a row (see
`flows.lib.drift_policy`), so a single check may alarm with a larger probability `p`: the one whose chance of a run of
`consecutive` alarms somewhere in `period_checks` independent checks equals the budget (`check_alarm_rate`). Windows
of successive checks are taken as independent (disjoint windows of fresh traffic); the episode is counted at check
level (any column), so the per-column persistence of the policy only makes the budget more conservative.

The thresholds split `p` over the columns by a max-statistic (Westfall-Young) calibration, which accounts for
correlated columns: each resample draws a no-drift window from the reference rows and computes every column's
statistic against a reference that carries its own sampling noise, as the real reference does. A reference of at least
`FIXED_REFERENCE_RATIO` times the window is split (a permutation null): the window is drawn without replacement and
compared with the other reference rows, which for the K-S distance and the total variation distance is the statistic
against the whole reference divided by `1 - window/reference`. A smaller reference is bootstrapped: a window-sized and
a reference-sized sample, both drawn with replacement. Each column's statistic is scaled by its null median, the check
statistic is the largest scaled value, and a high order statistic of it times a column's null median is that column's
threshold. The rows are drawn together for all columns, so correlated columns count as fewer independent tests.

The order statistic is an upper confidence bound, not a point estimate, of the check statistic's `1 - p` quantile:
with `n` resamples it leaves at most `j` of them above the threshold, `j` the largest count with
`P(Binomial(n, p) <= j) <= 1 - confidence`. A threshold so chosen alarms with probability above `p` (under the
resampled null) with probability at most `1 - confidence`, whatever the luck of the draw; the price is a per-check
rate of about `(j + 1) / (n + 1)` (0.55% instead of 0.85% with 2,000 resamples at the default budget).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from flows.lib.drift_stats import KS_DISTANCE, TVD, higher_is_drift

FIXED_REFERENCE_RATIO = 20
"""From this many reference rows per window row, the null splits the reference instead of bootstrapping it."""
CONFIDENCE = 0.95
"""Confidence that a calibrated threshold alarms no more often than the budget allows (over the resampling luck)."""
_BLOCK_CELLS = 4_000_000
"""Resamples are processed in blocks of about this many cells (resamples x rows or categories), to bound memory."""


def no_episode_probability(p: float, checks: int, consecutive: int) -> float:
    """Chance that `checks` independent checks, each alarming with probability `p`, hold no run of `consecutive`."""
    if consecutive <= 0:
        raise ValueError("consecutive must be at least 1")
    state = np.zeros(consecutive)  # state[i]: no run yet, current streak i
    state[0] = 1.0
    for _ in range(checks):
        new = np.zeros(consecutive)
        new[0] = state.sum() * (1 - p)
        new[1:] = state[:-1] * p
        state = new
    return float(state.sum())


def check_alarm_rate(budget: float, checks: int, consecutive: int) -> float:
    """The per-check alarm probability that gives a spurious episode in `checks` checks with probability `budget`."""
    if not 0 < budget < 1:
        raise ValueError("budget must be in (0, 1)")
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        if 1 - no_episode_probability(mid, checks, consecutive) > budget:
            high = mid
        else:
            low = mid
    return low


@dataclass
class ColumnCalibration:
    """The method and calibrated threshold of one column, with the null it came from."""

    column: str
    kind: str
    """`numerical` or `categorical`."""
    method: str
    threshold: float
    null_median: float
    """Median of the column's statistic on resampled no-drift windows (its scale)."""
    null_p99: float
    """99th percentile of the same."""
    resamples: int
    """Resamples behind this column's null (fewer for a method computed by Evidently one call at a time)."""


@dataclass
class Calibration:
    """Per-column thresholds of one model version: stored with it and shown in every drift report."""

    columns: list[ColumnCalibration]
    window_rows: int
    reference_rows: int
    budget: float
    period_checks: int
    consecutive: int
    check_alarm_rate: float
    """Target probability that one no-drift check alarms on any column."""
    resampled_alarm_rate: float
    """Share of the resampled no-drift checks that alarm with the chosen thresholds (below the target by design)."""
    resamples: int
    seed: int
    fixed_reference: bool
    """True when the null split the reference (window drawn without replacement, compared with the other rows);
    False when it bootstrapped a small reference."""
    notes: list[str] = field(default_factory=list)
    confidence: float = 0.0
    """Confidence that the thresholds alarm at most at `check_alarm_rate` (0 for a calibration made before the
    order statistic was chosen as an upper bound)."""
    allowed_exceedances: int = -1
    """Resampled no-drift checks allowed above the threshold (-1: not recorded)."""

    def methods(self) -> dict[str, str]:
        return {c.column: c.method for c in self.columns}

    def thresholds(self) -> dict[str, float]:
        return {c.column: c.threshold for c in self.columns}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        data = dict(data)
        data["columns"] = [ColumnCalibration(**c) for c in data["columns"]]
        return cls(**data)

    def summary(self) -> str:
        """One line for a version tag."""
        return (
            f"budget {self.budget} per {self.period_checks} checks, {self.consecutive} in a row: per-check alarm "
            f"{self.check_alarm_rate:.4g} over {len(self.columns)} columns at {self.confidence:.0%} confidence, window "
            f"{self.window_rows}, {self.resamples} resamples, seed {self.seed}"
        )


def default_method(kind: str) -> str:
    return KS_DISTANCE if kind == "numerical" else TVD


def _codes(values: pd.Series, kind: str) -> tuple[np.ndarray, int]:
    """Integer codes of the sorted distinct values (-1 for missing) and how many distinct values there are."""
    if kind == "numerical":
        x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
        x[~np.isfinite(x)] = np.nan
    else:
        x = values.astype(object).where(values.notna(), None).to_numpy()
    valid = pd.notna(x)
    codes = np.full(len(x), -1, dtype=np.int64)
    if valid.any():
        kept = x[valid] if kind == "numerical" else x[valid].astype(str)
        _, inverse = np.unique(kept, return_inverse=True)
        codes[valid] = inverse
    return codes, int(codes.max()) + 1


def _counts(codes: np.ndarray, k: int) -> np.ndarray:
    """Counts of each code per row of a (resamples x rows) code matrix (missing codes left out)."""
    b = codes.shape[0]
    keys = codes + (np.arange(b, dtype=np.int64) * k)[:, None]
    keys = keys[codes >= 0]
    return np.bincount(keys, minlength=b * k).reshape(b, k).astype(np.float64)


def _ks_from_counts(ref: np.ndarray, win: np.ndarray) -> np.ndarray:
    cr = np.cumsum(ref, axis=1) / np.maximum(ref.sum(axis=1, keepdims=True), 1)
    cw = np.cumsum(win, axis=1) / np.maximum(win.sum(axis=1, keepdims=True), 1)
    return np.abs(cr - cw).max(axis=1)


def _tvd_from_counts(ref: np.ndarray, win: np.ndarray) -> np.ndarray:
    pr = ref / np.maximum(ref.sum(axis=1, keepdims=True), 1)
    pw = win / np.maximum(win.sum(axis=1, keepdims=True), 1)
    return 0.5 * np.abs(pr - pw).sum(axis=1)


def _ks_fixed_reference(codes: np.ndarray, ref_codes: np.ndarray, k: int) -> np.ndarray:
    """K-S D of each window row (codes sorted per row not needed) against the fixed reference, for any number of
    distinct values: the window's CDF is read at its own values only."""
    counts = np.bincount(ref_codes[ref_codes >= 0], minlength=k).astype(np.float64)
    total = counts.sum()
    right = np.cumsum(counts) / total  # reference CDF at each distinct value
    left = right - counts / total  # just below it
    b, n = codes.shape
    valid = codes >= 0
    sizes = valid.sum(axis=1)
    big = np.where(valid, codes, k)  # missing sorts last and is ignored below
    big.sort(axis=1)
    keys = (big + (np.arange(b, dtype=np.int64) * (k + 1))[:, None]).ravel()
    offsets = np.repeat(np.arange(b, dtype=np.int64) * n, n)
    upto = np.searchsorted(keys, keys, side="right") - offsets  # window values <= this one
    below = np.searchsorted(keys, keys, side="left") - offsets  # window values < this one
    flat = big.ravel()
    ok = flat < k
    safe = np.where(ok, flat, 0)
    size = np.repeat(np.maximum(sizes, 1), n)
    gap = np.maximum(np.abs(right[safe] - upto / size), np.abs(left[safe] - below / size))
    gap[~ok] = 0.0
    # The window's CDF is 0 below its smallest value and 1 above its largest: covered by `below`/`upto` there.
    return gap.reshape(b, n).max(axis=1)


def _split_rows(rng: np.random.Generator, n_ref: int, b: int, window_rows: int) -> np.ndarray:
    """`b` windows of `window_rows` distinct reference rows each (drawn without replacement)."""
    return np.stack([rng.choice(n_ref, window_rows, replace=False) for _ in range(b)])


def _null_statistics(
    frame: pd.DataFrame, kinds: dict[str, str], methods: dict[str, str], window_rows: int, resamples: int, seed: int
) -> tuple[dict[str, np.ndarray], bool]:
    """Each column's statistic on `resamples` no-drift windows drawn from the reference rows (rows drawn jointly).

    A large reference is split: the window's rows are drawn without replacement and compared with the others. Both
    statistics are linear in the reference's shares, and the whole reference's shares are `f * window + (1 - f) *
    rest` (`f = window/reference`), so the statistic against the rest is the one against the whole divided by
    `1 - f`. Comparing with the whole reference instead would leave its own noise out of the null (the window would be
    a sample of the reference itself): with 10,000 reference rows and a 300-row window that alone raises the real
    per-check alarm rate by about a fifth.
    """
    rng = np.random.default_rng(seed)
    n_ref = len(frame)
    fixed = n_ref >= FIXED_REFERENCE_RATIO * window_rows
    coded = {c: _codes(frame[c], kinds[c]) for c in kinds if methods[c] in (KS_DISTANCE, TVD)}
    out: dict[str, list[np.ndarray]] = {c: [] for c in coded}
    width = window_rows + (0 if fixed else n_ref)
    block = max(1, min(resamples, _BLOCK_CELLS // max(width, max((k for _, k in coded.values()), default=1))))
    rest = 1 - window_rows / n_ref if fixed else 1.0
    done = 0
    while done < resamples:
        b = min(block, resamples - done)
        win_rows = _split_rows(rng, n_ref, b, window_rows) if fixed else rng.integers(0, n_ref, size=(b, window_rows))
        ref_rows = None if fixed else rng.integers(0, n_ref, size=(b, n_ref))
        for column, (codes, k) in coded.items():
            if k == 0:
                out[column].append(np.zeros(b))
                continue
            win = codes[win_rows]
            if fixed and methods[column] == KS_DISTANCE:
                out[column].append(_ks_fixed_reference(win, codes, k) / rest)
                continue
            win_counts = _counts(win, k)
            if fixed:
                ref_counts = np.bincount(codes[codes >= 0], minlength=k).astype(np.float64)[None, :]
            else:
                ref_counts = _counts(codes[ref_rows], k)
            stat = _ks_from_counts if methods[column] == KS_DISTANCE else _tvd_from_counts
            out[column].append(stat(ref_counts, win_counts) / rest)
        done += b
    return {c: np.concatenate(v) for c, v in out.items()}, fixed


def _evidently_null(
    series: pd.Series, kind: str, method: str, window_rows: int, resamples: int, seed: int, fixed: bool
) -> np.ndarray:
    """The null of any other Evidently stattest, one call per resample (slow: few resamples)."""
    from evidently.legacy.calculations.stattests.registry import get_registered_stattest
    from evidently.legacy.core import ColumnType

    column_type = ColumnType.Numerical if kind == "numerical" else ColumnType.Categorical
    test = get_registered_stattest(method, column_type)
    values = series.dropna().reset_index(drop=True)
    rng = np.random.default_rng(seed)
    scores = np.empty(resamples)
    for i in range(resamples):
        if fixed:  # split: the window's rows against the other reference rows
            rows = rng.choice(len(values), min(window_rows, len(values) - 1), replace=False)
            window = values.iloc[rows].reset_index(drop=True)
            reference = values.drop(index=rows).reset_index(drop=True)
        else:
            window = values.iloc[rng.integers(0, len(values), window_rows)].reset_index(drop=True)
            reference = values.iloc[rng.integers(0, len(values), len(values))].reset_index(drop=True)
        scores[i] = test(reference, window, column_type, None).drift_score
    return scores


def _as_drift_scale(scores: np.ndarray, method: str) -> np.ndarray:
    """Scores where larger means more drift (p-values as -log10 p)."""
    if higher_is_drift(method):
        return scores
    return -np.log10(np.clip(scores, 1e-300, 1.0))


def _from_drift_scale(value: float, method: str) -> float:
    return value if higher_is_drift(method) else float(10.0 ** (-value))


def calibrate(
    reference: pd.DataFrame,
    columns: list[str],
    *,
    kinds: dict[str, str],
    window_rows: int,
    budget: float,
    period_checks: int,
    consecutive: int,
    resamples: int = 5000,
    seed: int = 42,
    per_column_method: dict[str, str] | None = None,
    evidently_resamples: int = 300,
    confidence: float = CONFIDENCE,
) -> Calibration:
    """Calibrate one threshold per column so that the whole check meets the false-alarm budget.

    Args:
        reference: The reference rows (a version's reference sample).
        columns: The columns the drift check tests.
        kinds: `numerical` or `categorical` per column.
        window_rows: The rows of a drift check's window.
        budget: Allowed probability of a spurious episode per period.
        period_checks: Checks per period (720: hourly checks over 30 days).
        consecutive: Alarms in a row that make an episode.
        resamples: No-drift windows resampled.
        seed: Seed of the resampling.
        per_column_method: Evidently method per column over the defaults (`KS_DISTANCE`, `TVD`); another method is
            computed by Evidently itself on `evidently_resamples` resamples.
        evidently_resamples: Resamples for such a method.
        confidence: Confidence that the thresholds alarm no more often than the budget allows
            (`allowed_exceedances`).

    Returns:
        The calibration (methods, thresholds and how they were found).
    """
    if not columns:
        raise ValueError("No columns to calibrate.")
    if window_rows < 1 or resamples < 100:
        raise ValueError("window_rows must be at least 1 and resamples at least 100.")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    overrides = per_column_method or {}
    methods = {c: overrides.get(c) or default_method(kinds[c]) for c in columns}
    p = check_alarm_rate(budget, period_checks, consecutive)
    nulls, fixed = _null_statistics(reference, kinds, methods, window_rows, resamples, seed)
    notes = []
    for i, column in enumerate(columns):
        if column not in nulls:
            nulls[column] = _evidently_null(
                reference[column], kinds[column], methods[column], window_rows, evidently_resamples, seed + i, fixed
            )
            notes.append(f"{column}: {methods[column]} computed by Evidently on {evidently_resamples} resamples")
    scaled, medians = [], {}
    for column in columns:
        values = _as_drift_scale(nulls[column], methods[column])
        medians[column] = max(float(np.median(values)), 1e-12)
        m = len(values)
        # Columns with fewer resamples (Evidently-computed) are tiled to the common length: their tail is coarser.
        scaled.append(np.resize(values / medians[column], resamples) if m != resamples else values / medians[column])
    check_stat = np.max(np.vstack(scaled), axis=0)
    # Not the plain 1 - p quantile: with about p * resamples values above it, it is too low for half the seeds.
    allowed = allowed_exceedances(resamples, p, confidence)
    level = float(np.sort(check_stat)[resamples - 1 - max(allowed, 0)])
    result_columns = []
    for column in columns:
        cut = level * medians[column]
        threshold = _from_drift_scale(cut, methods[column])
        drift_scale = _as_drift_scale(nulls[column], methods[column])
        result_columns.append(
            ColumnCalibration(
                column=column,
                kind=kinds[column],
                method=methods[column],
                threshold=float(threshold),
                null_median=float(_from_drift_scale(float(np.median(drift_scale)), methods[column])),
                null_p99=float(_from_drift_scale(float(np.quantile(drift_scale, 0.99)), methods[column])),
                resamples=len(nulls[column]),
            )
        )
    achieved = float(np.mean(check_stat > level))
    reached = confidence
    if allowed < 0:
        reached = 1 - (1 - p) ** resamples
        notes.append(
            f"{resamples} resamples are too few for {confidence:.0%} confidence that the per-check alarm rate stays "
            f"below {p:.2g}: the threshold is the largest resampled value, which gives {reached:.0%}; "
            f"use at least {min_resamples(p, confidence)} resamples"
        )
    return Calibration(
        columns=result_columns,
        window_rows=window_rows,
        reference_rows=len(reference),
        budget=budget,
        period_checks=period_checks,
        consecutive=consecutive,
        check_alarm_rate=p,
        resampled_alarm_rate=achieved,
        resamples=resamples,
        seed=seed,
        fixed_reference=fixed,
        notes=notes,
        confidence=reached,
        allowed_exceedances=max(allowed, 0),
    )


def allowed_exceedances(resamples: int, p: float, confidence: float) -> int:
    """The most resampled no-drift checks that may lie above a threshold for it to alarm with probability at most `p`
    with `confidence` (-1 when even the largest resampled value gives less confidence).

    The share of the null above the order statistic with `j` resamples above it is Beta(j + 1, resamples - j)
    distributed, so it exceeds `p` with probability `P(Binomial(resamples, p) <= j)` (scipy).
    """
    from scipy.stats import binom

    j = int(binom.ppf(1 - confidence, resamples, p))
    while j >= 0 and binom.cdf(j, resamples, p) > 1 - confidence:
        j -= 1
    return j


def min_resamples(p: float, confidence: float) -> int:
    """The fewest resamples whose largest value bounds the `p` tail with `confidence`."""
    return int(np.ceil(np.log(1 - confidence) / np.log1p(-p)))


def window_sizes(min_rows: int, window_rows: int) -> list[int]:
    """Window sizes calibrated for a version: doubling from `min_rows` up to `window_rows` (both included).

    A check uses the calibration of the largest size not above its window's rows: a smaller window than calibrated
    would alarm too often, a larger one is tested a little conservatively.
    """
    sizes, size = [], max(1, min(min_rows, window_rows))
    while size < window_rows:
        sizes.append(size)
        size *= 2
    return sizes + [window_rows]


@dataclass
class VersionCalibration:
    """Everything a version's drift checks compare against, stored with the version."""

    calibrations: list[Calibration]
    """One per window size (`window_sizes`), smallest first."""
    prediction_counts: dict[str, int]
    """The version's own predictions on its reference rows, per class (prediction drift compares with them)."""
    label_counts: dict[str, int]
    """The reference's labels per class (label drift compares with them)."""
    holdout_accuracy: float | None
    """The version's accuracy on its holdout when registered (a performance drop is measured against it)."""

    def for_rows(self, rows: int) -> Calibration:
        """The calibration of the largest window size not above `rows` (the smallest when all are above)."""
        fitting = [c for c in self.calibrations if c.window_rows <= rows]
        return fitting[-1] if fitting else self.calibrations[0]

    def as_dict(self) -> dict[str, Any]:
        return {
            "calibrations": [c.as_dict() for c in self.calibrations],
            "prediction_counts": self.prediction_counts,
            "label_counts": self.label_counts,
            "holdout_accuracy": self.holdout_accuracy,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VersionCalibration:
        return cls(
            calibrations=[Calibration.from_dict(c) for c in data["calibrations"]],
            prediction_counts={str(k): int(v) for k, v in data.get("prediction_counts", {}).items()},
            label_counts={str(k): int(v) for k, v in data.get("label_counts", {}).items()},
            holdout_accuracy=data.get("holdout_accuracy"),
        )

    def summary(self) -> str:
        largest = self.calibrations[-1]
        sizes = ",".join(str(c.window_rows) for c in self.calibrations)
        return f"{largest.summary()}; windows {sizes}"


def class_counts(values: Any) -> dict[str, int]:
    """Counts per class, classes as strings (missing left out)."""
    return {str(k): int(v) for k, v in pd.Series(values).dropna().astype(str).value_counts().sort_index().items()}


def calibrate_version(
    reference: pd.DataFrame,
    *,
    target: str,
    predictions: Any,
    holdout_accuracy: float | None,
    min_rows: int,
    window_rows: int,
    budget: float,
    period_checks: int,
    consecutive: int,
    resamples: int,
    seed: int,
    per_column_method: dict[str, str] | None = None,
    confidence: float = CONFIDENCE,
) -> VersionCalibration:
    """Calibrate a version's drift checks on its reference, for every window size a check may have.

    Args:
        reference: The version's reference rows (features and target).
        target: The target column (not tested as a feature).
        predictions: The version's predictions on the reference rows.
        holdout_accuracy: Its holdout accuracy.
        min_rows: The smallest window a check runs on.
        window_rows: The largest.
        budget: Allowed probability of a spurious drift episode per period.
        period_checks: Checks per period.
        consecutive: Alarms in a row that make an episode.
        resamples: No-drift windows resampled per size.
        seed: Seed of the resampling.
        per_column_method: Evidently method per column over the defaults.
        confidence: Confidence that each size's thresholds meet the budget (`calibrate`).
    """
    from flows.lib.drift import column_roles

    columns = [c for c in reference.columns if c != target]
    numerical, _ = column_roles(reference, columns)
    kinds = {c: "numerical" if c in numerical else "categorical" for c in columns}
    calibrations = [
        calibrate(
            reference,
            columns,
            kinds=kinds,
            window_rows=size,
            budget=budget,
            period_checks=period_checks,
            consecutive=consecutive,
            resamples=resamples,
            seed=seed,
            per_column_method=per_column_method,
            confidence=confidence,
        )
        for size in window_sizes(min_rows, window_rows)
    ]
    return VersionCalibration(
        calibrations=calibrations,
        prediction_counts=class_counts(predictions),
        label_counts=class_counts(reference[target]) if target in reference.columns else {},
        holdout_accuracy=holdout_accuracy,
    )


def expected_false_episodes(calibration: Calibration) -> float:
    """Probability of a spurious episode per period implied by the resampled alarm rate."""
    return 1 - no_episode_probability(
        calibration.resampled_alarm_rate, calibration.period_checks, calibration.consecutive
    )
