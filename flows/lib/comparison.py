"""Two models compared on the same labelled rows: the difference of a metric with a paired bootstrap interval (scipy).

Both models predict every holdout row, so the comparison is paired: resampling rows (not each model's scores apart)
keeps the correlation between the two models' errors, which makes the interval on the difference much narrower than
two separate intervals would suggest. The statistic is computed for whole batches of resamples at once.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

from contracts.registry import CHAMPION

Metric = Literal["f1_macro", "accuracy"]


@dataclass(frozen=True)
class PairedDifference:
    """A metric of two models on the same rows, and the interval on candidate minus champion."""

    metric: str
    candidate: float
    champion: float
    difference: float
    """candidate - champion on all rows."""
    low: float
    high: float
    """The interval on the difference."""
    confidence: float
    rows: int
    resamples: int
    method: str
    """How the interval was computed (`BCa bootstrap`, `percentile bootstrap`, or `identical predictions`)."""
    disagreements: int
    """Rows on which the two models predict differently (only those can move the difference)."""

    def as_dict(self) -> dict[str, Any]:
        """The comparison as plain JSON-ready values."""
        return asdict(self)


def _encode(*columns: Any) -> list[np.ndarray]:
    """Labels and predictions as integer codes over their union, compared as text (as the router compares them)."""
    texts = [np.asarray(c).astype(str) for c in columns]
    _, codes = np.unique(np.concatenate(texts), return_inverse=True)
    bounds = np.cumsum([0] + [len(t) for t in texts])
    return [codes[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _metric(y: np.ndarray, pred: np.ndarray, metric: Metric, classes: int) -> np.ndarray:
    """The metric over the last axis (so a batch of resamples is scored at once).

    Macro F1 averages over the classes present in the labels or predictions of each resample, as scikit-learn's
    `f1_score(average="macro", zero_division=0)` does.
    """
    if metric == "accuracy":
        return np.mean(y == pred, axis=-1)
    f1s, present = [], []
    for k in range(classes):
        truth, guess = y == k, pred == k
        tp = np.sum(truth & guess, axis=-1)
        wrong = np.sum(truth ^ guess, axis=-1)  # false positives plus false negatives
        denominator = 2 * tp + wrong
        f1s.append(np.divide(2 * tp, denominator, out=np.zeros(denominator.shape), where=denominator > 0))
        present.append(denominator > 0)
    f1s, present = np.stack(f1s), np.stack(present)
    return np.sum(f1s * present, axis=0) / np.maximum(np.sum(present, axis=0), 1)


def paired_difference(
    y_true: Any,
    candidate: Any,
    champion: Any,
    *,
    metric: Metric = "f1_macro",
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> PairedDifference:
    """Candidate minus champion on a metric, with a paired bootstrap interval (scipy's BCa, else percentile).

    Args:
        y_true: The labels of the rows.
        candidate: The candidate's predictions on them.
        champion: The champion's predictions on them.
        metric: `f1_macro` or `accuracy`.
        confidence: Level of the two-sided interval.
        resamples: Bootstrap resamples.
        seed: Random seed of the resampling.

    Returns:
        Both models' metric, the difference and its interval.

    Raises:
        ValueError: When the three inputs differ in length or are empty.
    """
    y, a, b = _encode(y_true, candidate, champion)
    if not (len(y) == len(a) == len(b)) or len(y) == 0:
        raise ValueError(f"need the same non-zero number of labels and predictions, got {len(y)}, {len(a)}, {len(b)}")
    classes = int(max(y.max(), a.max(), b.max())) + 1
    score_a, score_b = (float(_metric(y, p, metric, classes)) for p in (a, b))
    difference = score_a - score_b
    disagreements = int(np.sum(a != b))
    common = {"metric": metric, "candidate": score_a, CHAMPION: score_b, "difference": difference}
    common |= {"confidence": confidence, "rows": len(y), "resamples": resamples, "disagreements": disagreements}
    if disagreements == 0:
        # Every resample gives 0: the interval is exactly [0, 0] (the bootstrap would warn of degenerate data).
        return PairedDifference(low=0.0, high=0.0, method="identical predictions", **common)

    def statistic(y: np.ndarray, a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return _metric(y, a, metric, classes) - _metric(y, b, metric, classes)

    def interval(method: str) -> tuple[float, float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a degenerate BCa interval comes back as NaN: handled below
            result = stats.bootstrap(
                (y, a, b),
                statistic,
                paired=True,
                vectorized=True,
                n_resamples=resamples,
                confidence_level=confidence,
                method=method,
                batch=200,
                random_state=np.random.default_rng(seed),
            )
        return float(result.confidence_interval.low), float(result.confidence_interval.high)

    low, high = interval("BCa")
    if np.isnan(low) or np.isnan(high):
        low, high = interval("percentile")
        return PairedDifference(low=low, high=high, method="percentile bootstrap", **common)
    return PairedDifference(low=low, high=high, method="BCa bootstrap", **common)


@dataclass(frozen=True)
class HoldoutComparison:
    """The gate's evidence: both models' metrics on the same holdout rows and the interval on their F1 difference."""

    candidate: dict[str, float]
    champion: dict[str, float]
    f1: PairedDifference

    def as_dict(self) -> dict[str, Any]:
        """The evidence as plain JSON-ready values."""
        return asdict(self)
