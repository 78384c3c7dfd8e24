"""The per-column drift statistics the loop uses, registered as Evidently stattests so Evidently runs the tests.

Both statistics are distances (drift when `score > threshold`) whose null distribution the calibration resamples
(`flows.lib.drift_calibration`); thresholds are calibrated per column, so no textbook default applies.

- `KS_DISTANCE` (numerical): the two-sample Kolmogorov-Smirnov statistic D, the largest gap between the two
  empirical CDFs (computed by `scipy.stats.ks_2samp`). Unlike Evidently's `ks`, which reports the p-value from the
  asymptotic or exact null of continuous data, D is compared with a threshold resampled from the reference itself:
  ties (measurements rounded to 0.1 cm, counts) and the reference's own size are accounted for.
- `TVD` (categorical): total variation distance between the category shares, half the sum of absolute differences;
  a category seen only in the window counts fully.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

KS_DISTANCE = "driftloop_ks_d"
"""Evidently method id of the K-S distance D (numerical columns)."""
TVD = "driftloop_tvd"
"""Evidently method id of the total variation distance (categorical columns)."""
CALIBRATED_METHODS = (KS_DISTANCE, TVD)
P_VALUE_METHODS = frozenset(
    {"ks", "chisquare", "z", "fisher_exact", "g_test", "mannw", "t_test", "anderson", "cramer_von_mises", "es", "TVD"}
)
"""Evidently stattests whose score is a p-value (drift when `score < threshold`); the others score a distance."""


def ks_distance(reference: np.ndarray, current: np.ndarray) -> float:
    """The two-sample K-S statistic D (scipy), 0 when the empirical distributions are equal, up to 1."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(reference, current).statistic)


def tvd(reference: pd.Series, current: pd.Series) -> float:
    """Total variation distance between the category shares of two samples (NaN left out), 0..1."""
    ref = reference.dropna().astype(str).value_counts(normalize=True)
    cur = current.dropna().astype(str).value_counts(normalize=True)
    if ref.empty or cur.empty:
        return 1.0 if ref.empty != cur.empty else 0.0
    ref, cur = ref.align(cur, fill_value=0.0)
    return float(0.5 * np.abs(ref.to_numpy() - cur.to_numpy()).sum())


def higher_is_drift(method: str) -> bool:
    """True for distance scores (drift when above the threshold), False for p-values (drift when below)."""
    return method not in P_VALUE_METHODS


def register() -> None:
    """Make the two statistics available to Evidently under `KS_DISTANCE` and `TVD` (idempotent)."""
    from evidently.legacy.calculations.stattests.registry import StatTest, _registered_stat_tests, register_stattest
    from evidently.legacy.core import ColumnType

    if KS_DISTANCE in _registered_stat_tests and TVD in _registered_stat_tests:
        return

    def ks_test(reference: pd.Series, current: pd.Series, feature_type, threshold: float) -> tuple[float, bool]:
        score = ks_distance(np.asarray(reference, dtype=float), np.asarray(current, dtype=float))
        return score, score > threshold

    def tvd_test(reference: pd.Series, current: pd.Series, feature_type, threshold: float) -> tuple[float, bool]:
        score = tvd(pd.Series(reference), pd.Series(current))
        return score, score > threshold

    register_stattest(
        StatTest(
            name=KS_DISTANCE,
            display_name="K-S distance (calibrated)",
            allowed_feature_types=[ColumnType.Numerical],
            default_threshold=0.1,
        ),
        ks_test,
    )
    register_stattest(
        StatTest(
            name=TVD,
            display_name="Total variation distance (calibrated)",
            allowed_feature_types=[ColumnType.Categorical],
            default_threshold=0.1,
        ),
        tvd_test,
    )
