"""One drift check of a window against a version's reference: data quality first, then the calibrated per-column
tests (run by Evidently), then prediction drift, label drift and accuracy where the window has them.

The result is the check's raw findings; persistence and severity are `flows.lib.drift_policy`'s job. Used by the drift
flow, the replay command (`python -m flows.drift_replay`) and the simulations in `bench/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

from flows.lib import drift_policy
from flows.lib.data_quality import QualityReport, QualityRules, QualityTally
from flows.lib.drift import DriftResult, column_roles, compute_drift
from flows.lib.drift_calibration import Calibration, VersionCalibration

if TYPE_CHECKING:
    from flows.lib.window_reader import DriftWindow
    from flows.settings import FlowSettings


@dataclass
class CheckConfig:
    """How a check runs."""

    quality: QualityRules = field(default_factory=QualityRules)
    max_window_rows: int = 20_000
    """A larger window is tested on a seeded sample of this many rows (size and seed are in the result)."""
    sample_seed: int = 42
    report_drift_share: float = 0.3
    """Share of drifted columns at which the HTML report's dataset-level test fails (the critical share)."""
    outcome_alpha: float = 1e-3
    """Level of the prediction- and label-drift tests (chi-squared on the class shares)."""
    accuracy_confidence: float = 0.95
    max_accuracy_drop: float = 0.05
    """A performance drop: the interval's upper end lies more than this below the holdout accuracy."""
    min_labelled: int = 30
    """Fewer labelled rows than this: no accuracy or label verdict."""


def check_config(settings: FlowSettings) -> CheckConfig:
    """How a check runs, as the flows' settings (`DRIFTLOOP_DRIFT_*`) say."""
    return CheckConfig(
        quality=QualityRules(
            missing_tolerance=settings.drift_missing_tolerance,
            range_tolerance=settings.drift_range_tolerance,
            unseen_tolerance=settings.drift_unseen_tolerance,
            alpha=settings.drift_quality_alpha,
        ),
        max_window_rows=settings.drift_max_window_rows,
        sample_seed=settings.session_id,
        report_drift_share=settings.drift_share_threshold,
        outcome_alpha=settings.drift_outcome_alpha,
        max_accuracy_drop=settings.drift_max_accuracy_drop,
        min_labelled=settings.drift_min_labelled,
    )


@dataclass
class AccuracyCheck:
    """Accuracy of the served model on the window's labelled rows, against its holdout accuracy."""

    labelled: int
    correct: int
    accuracy: float
    low: float
    high: float
    holdout_accuracy: float | None
    dropped: bool


@dataclass
class ShareShift:
    """A chi-squared test of the window's class shares against the reference's."""

    statistic: float
    p_value: float
    shifted: bool
    rows: int


@dataclass
class CheckResult:
    """Raw findings of one check."""

    quality: QualityReport
    drift: DriftResult | None
    """None when the window failed the schema, or no column was testable."""
    tested_columns: list[str]
    sample_rows: int
    sample_seed: int
    calibration: Calibration
    """The calibration used (the one for the window's size)."""
    prediction: ShareShift | None = None
    label: ShareShift | None = None
    accuracy: AccuracyCheck | None = None

    @property
    def valid(self) -> bool:
        return self.quality.valid

    def alarms(self) -> set[str]:
        """Finding keys of this check (see `drift_policy`)."""
        keys = set(self.drift.drifted_columns if self.drift else [])
        keys |= {f"{drift_policy.QUALITY_PREFIX}{c}" for c in self.quality.flagged()}
        if self.prediction is not None and self.prediction.shifted:
            keys.add(drift_policy.PREDICTION_KEY)
        if self.label is not None and self.label.shifted:
            keys.add(drift_policy.LABEL_KEY)
        if self.accuracy is not None and self.accuracy.dropped:
            keys.add(drift_policy.PERFORMANCE_KEY)
        return keys


def share_shift(reference: dict[str, int], current: pd.Series, alpha: float) -> ShareShift | None:
    """Chi-squared goodness of fit of the window's class counts to the reference's class counts (scipy)."""
    return share_shift_counts(reference, current.dropna().astype(str).value_counts(), alpha)


def class_counts(counts: dict[str, int]) -> pd.Series:
    """Class counts added up page by page (classes in order of first appearance) as `value_counts` orders them."""
    return pd.Series(counts, dtype="int64").sort_values(ascending=False)


def share_shift_counts(reference: dict[str, int], current: pd.Series, alpha: float) -> ShareShift | None:
    """`share_shift` on the window's class counts (a `value_counts` series)."""
    from scipy.stats import chisquare

    ref = pd.Series(reference, dtype=float)
    cur = current
    if ref.empty or cur.empty:
        return None
    ref, cur = ref.align(cur, fill_value=0)
    # Half a count added to the reference keeps a class it never had from dividing by zero.
    expected = (ref + 0.5) / (ref + 0.5).sum() * cur.sum()
    statistic, p_value = chisquare(cur.to_numpy(float), expected.to_numpy(float))
    return ShareShift(float(statistic), float(p_value), bool(p_value < alpha), int(cur.sum()))


def accuracy_check(
    labels: pd.Series, predictions: pd.Series, holdout_accuracy: float | None, confidence: float, max_drop: float
) -> AccuracyCheck:
    """Accuracy with a Wilson interval (scipy); a drop when the interval lies `max_drop` below the holdout's."""
    return accuracy_counts(correct_answers(labels, predictions), len(labels), holdout_accuracy, confidence, max_drop)


def correct_answers(labels: pd.Series, predictions: pd.Series) -> int:
    """How many predictions equal their label, compared as text."""
    labels, predictions = labels.astype(str).reset_index(drop=True), predictions.astype(str).reset_index(drop=True)
    return int((labels == predictions).sum())


def accuracy_counts(
    correct: int, n: int, holdout_accuracy: float | None, confidence: float, max_drop: float
) -> AccuracyCheck:
    """`accuracy_check` on counts: `correct` right answers among `n` labelled rows."""
    from scipy.stats import binomtest

    interval = binomtest(correct, n).proportion_ci(confidence_level=confidence, method="wilson")
    dropped = holdout_accuracy is not None and interval.high < holdout_accuracy - max_drop
    return AccuracyCheck(n, correct, correct / n, float(interval.low), float(interval.high), holdout_accuracy, dropped)


def run_check(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    calibrated: VersionCalibration,
    *,
    config: CheckConfig | None = None,
    current_predictions: pd.Series | None = None,
    current_labels: pd.Series | None = None,
    labelled_predictions: pd.Series | None = None,
) -> CheckResult:
    """Check a window against the reference with the version's calibration.

    Args:
        reference: The reference rows (features; other columns are ignored).
        current: The window's features, every column its records had.
        calibrated: The version's calibration: per-column methods and thresholds per window size, its prediction
            and label counts and its holdout accuracy.
        config: How the check runs.
        current_predictions: What the version served for the window's rows (prediction drift).
        current_labels: The labels of the window's labelled rows (label drift, accuracy).
        labelled_predictions: What was served for those labelled rows, aligned with `current_labels`.
    """
    config = config or CheckConfig()
    tally = quality_tally(reference, calibrated, config)
    tally.add(current)
    quality = tally.report()
    window = current
    if quality.valid and len(current) > config.max_window_rows:
        window = current[quality.testable()].sample(config.max_window_rows, random_state=config.sample_seed)
    predictions = labels = None
    if current_predictions is not None and len(current_predictions):
        predictions = current_predictions.dropna().astype(str).value_counts()
    if current_labels is not None:
        labels = current_labels.dropna().astype(str).value_counts()
    correct = None
    if current_labels is not None and labelled_predictions is not None:
        correct = correct_answers(current_labels, labelled_predictions)
    return _check(
        reference,
        calibrated,
        config,
        rows=len(current),
        quality=quality,
        window=window,
        predictions=predictions,
        labels=labels,
        labelled=0 if current_labels is None else len(current_labels),
        correct=correct,
    )


def quality_tally(reference: pd.DataFrame, calibrated: VersionCalibration, config: CheckConfig) -> QualityTally:
    """A fresh data-quality tally of a window against the reference, on the calibrated columns."""
    columns = [c.column for c in calibrated.calibrations[-1].columns]
    numerical, _ = column_roles(reference, columns)
    kinds = {c: "numerical" if c in numerical else "categorical" for c in columns}
    return QualityTally(reference, columns, kinds, config.quality)


def run_window_check(
    reference: pd.DataFrame, window: DriftWindow, calibrated: VersionCalibration, *, config: CheckConfig | None = None
) -> CheckResult:
    """Check a window read page by page (`flows.lib.window_reader.read_drift_window`): quality over every row,
    the per-column tests on its seeded sample, prediction drift, label drift and accuracy from its counts.

    The same findings as `run_check` on the window's whole frame for a window no larger than the sample; a larger one
    is tested on the reservoir sample the reader kept (seeded by `config.sample_seed`) instead of `DataFrame.sample`.
    """
    config = config or CheckConfig()
    served = window.served
    return _check(
        reference,
        calibrated,
        config,
        rows=window.rows,
        quality=window.quality,
        window=window.sample,
        predictions=class_counts(served.predictions) if served.predictions else None,
        labels=class_counts(served.labels),
        labelled=served.labelled,
        correct=served.correct,
    )


def _check(
    reference: pd.DataFrame,
    calibrated: VersionCalibration,
    config: CheckConfig,
    *,
    rows: int,
    quality: QualityReport,
    window: pd.DataFrame,
    predictions: pd.Series | None,
    labels: pd.Series | None,
    labelled: int,
    correct: int | None,
) -> CheckResult:
    """The check once the window's quality is known: `window` is the frame the drift tests run on (at most
    `config.max_window_rows` rows), `rows` the window's size; outcomes come as class counts."""
    calibration = calibrated.for_rows(rows)
    result = CheckResult(
        quality=quality,
        drift=None,
        tested_columns=[],
        sample_rows=len(window),
        sample_seed=config.sample_seed,
        calibration=calibration,
    )
    if not quality.valid:
        result.sample_rows = rows
        return result
    tested = quality.testable()
    window = window[tested]
    # Evidently drops missing values; a column whose window is entirely missing is a quality finding, not a test.
    tested = [c for c in tested if window[c].notna().any() and reference[c].notna().any()]
    result.tested_columns = tested
    if tested:
        result.drift = compute_drift(
            reference[tested],
            window[tested],
            columns=tested,
            per_column_method={c: calibration.methods()[c] for c in tested},
            per_column_threshold={c: calibration.thresholds()[c] for c in tested},
            drift_share=config.report_drift_share,
        )
    if calibrated.prediction_counts and predictions is not None and int(predictions.sum()):
        result.prediction = share_shift_counts(calibrated.prediction_counts, predictions, config.outcome_alpha)
    if labels is not None and labelled >= config.min_labelled:
        if calibrated.label_counts:
            result.label = share_shift_counts(calibrated.label_counts, labels, config.outcome_alpha)
        if correct is not None:
            result.accuracy = accuracy_counts(
                correct, labelled, calibrated.holdout_accuracy, config.accuracy_confidence, config.max_accuracy_drop
            )
    return result
