"""Data drift between a reference and a current window, with Evidently's DataDriftPreset (0.7 API).

The methods and thresholds come from a version's calibration (`flows.lib.drift_calibration`): Evidently runs the
per-column tests with them, so its HTML report and the flow give one verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pandas.api import types as ptypes

DRIFTED_COLUMNS_COUNT = "evidently:metric_v2:DriftedColumnsCount"
VALUE_DRIFT = "evidently:metric_v2:ValueDrift"
VALUE_DRIFT_TEST_ID = "drift"
"""Id of the test Evidently attaches to every ValueDrift of the preset (with `include_tests=True`)."""


@dataclass
class ColumnDrift:
    """Evidently's verdict on one column."""

    column: str
    method: str
    """Evidently's stattest id (`ks`, `psi`, `wasserstein`, ...), also when Evidently chose it."""
    score: float
    """The stattest's value: a p-value for p-value tests (ks, chisquare, z, ...), where drift means
    `score < threshold`; a distance for the others (wasserstein, psi, jensenshannon, ...), where drift means
    `score >= threshold`. Use `drifted` rather than comparing yourself."""
    threshold: float
    drifted: bool
    """Evidently's own verdict (its per-column test failed)."""


@dataclass
class DriftResult:
    """Drift of a window against the reference."""

    drift_share: float
    """Share of the checked columns that drifted (0..1)."""
    drifted_columns: list[str]
    """Drifted columns, in the order they were checked."""
    n_columns: int
    columns: list[ColumnDrift]
    snapshot: Any
    """Evidently's Snapshot, for `save_report`."""


def column_roles(frame: pd.DataFrame, columns: list[str]) -> tuple[list[str], list[str]]:
    """Split columns into numerical and categorical by their dtype in `frame` (booleans are categorical)."""
    numerical, categorical = [], []
    for column in columns:
        dtype = frame[column].dtype
        is_number = ptypes.is_numeric_dtype(dtype) and not ptypes.is_bool_dtype(dtype)
        (numerical if is_number else categorical).append(column)
    return numerical, categorical


def _stattest_ids() -> dict[str, str]:
    """Evidently's stattest display names (`K-S p_value`) mapped to their ids (`ks`)."""
    try:
        from evidently.legacy.calculations.stattests import registry
    except ImportError:  # pragma: no cover - layout of a future Evidently
        return {}
    registered = getattr(registry, "_registered_stat_tests", {})  # private: degrade to raw names
    return {test.display_name: test.name for by_type in registered.values() for test in by_type.values()}


def _method_id(method: str, ids: dict[str, str]) -> str:
    # An auto-chosen method is reported by display name, an explicit one by id: report ids throughout.
    return ids.get(method, method)


def _prepare(
    reference: pd.DataFrame, current: pd.DataFrame, columns: list[str], numerical: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    reference = reference[columns].reset_index(drop=True)
    current = current[columns].reset_index(drop=True)
    # Features from the inference log can arrive as ints or strings of a float column: compare numbers.
    for column in numerical:
        if not ptypes.is_numeric_dtype(current[column].dtype) or ptypes.is_bool_dtype(current[column].dtype):
            try:
                current[column] = pd.to_numeric(current[column], errors="raise")
            except (TypeError, ValueError) as exc:
                raise ValueError(f"Column {column!r} is numerical in the reference but not in the window.") from exc
    return reference, current


def compute_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    columns: list[str] | None = None,
    method: str | None = None,
    threshold: float | None = None,
    per_column_method: dict[str, str] | None = None,
    per_column_threshold: dict[str, float] | None = None,
    drift_share: float = 0.5,
    target: str | None = None,
) -> DriftResult:
    """Compare the current window with the reference, column by column.

    Args:
        reference: The reference data (the champion's training data).
        current: The window to check.
        columns: Columns to check, normally the feature columns. None: every reference column that the
            window also has, except `target`.
        method: Evidently stattest for every column (`ks`, `psi`, `wasserstein`, ...). None: Evidently
            picks by column type and size (K-S/chi-squared up to 1000 reference rows, Wasserstein/
            Jensen-Shannon above).
        threshold: Threshold of that stattest. None: the stattest's default.
        per_column_method: Stattest per column, over `method`.
        per_column_threshold: Threshold per column, over `threshold`.
        drift_share: Share of drifted columns at which Evidently's dataset-level test fails. It only
            shapes the HTML report; decide on `DriftResult.drift_share` yourself.
        target: The target column, never checked (its drift is concept drift, not data drift).

    Returns:
        Per-column verdicts (Evidently's own tests) and the share of drifted columns.

    Raises:
        ValueError: When a column is missing, either frame is empty, or a numerical column isn't one
            in the window.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    from flows.lib import drift_stats

    drift_stats.register()  # the calibrated statistics, so a calibration's methods resolve
    if columns is None:
        columns = [c for c in reference.columns if c in current.columns]
    columns = [c for c in columns if c != target]
    if not columns:
        raise ValueError("No columns to check for drift.")
    for name, frame in (("reference", reference), ("current", current)):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"Columns {missing} are not in the {name} data.")
        if frame.empty:
            raise ValueError(f"The {name} data has no rows.")

    numerical, categorical = column_roles(reference, columns)
    reference, current = _prepare(reference, current, columns, numerical)
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    preset = DataDriftPreset(
        columns=columns,
        method=method,
        threshold=threshold,
        per_column_method=per_column_method,
        per_column_threshold=per_column_threshold,
        drift_share=drift_share,
    )
    snapshot = Report([preset], include_tests=True).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    return _read_snapshot(snapshot, columns)


def _read_snapshot(snapshot: Any, columns: list[str]) -> DriftResult:
    """Read the preset's results by metric type and the id of each metric, never by position."""
    results = snapshot.dict()
    by_type: dict[str, list[dict]] = {}
    for metric in results["metrics"]:
        by_type.setdefault(metric["config"]["type"], []).append(metric)
    verdicts: dict[str, str] = {
        test["metric_config"]["metric_id"]: str(getattr(test["status"], "value", test["status"]))
        for test in results["tests"]
        if test["id"] == VALUE_DRIFT_TEST_ID
    }

    counts = by_type.get(DRIFTED_COLUMNS_COUNT, [])
    if len(counts) != 1:
        raise RuntimeError(f"Expected one {DRIFTED_COLUMNS_COUNT} result, found {len(counts)}.")
    ids = _stattest_ids()
    per_column: dict[str, ColumnDrift] = {}
    for metric in by_type.get(VALUE_DRIFT, []):
        config = metric["config"]
        status = verdicts.get(metric["id"])
        if status not in ("SUCCESS", "FAIL"):
            raise RuntimeError(f"No drift verdict for column {config['column']!r} (test status {status}).")
        per_column[config["column"]] = ColumnDrift(
            column=config["column"],
            method=_method_id(str(config["method"]), ids),
            score=float(metric["value"]),
            threshold=float(config["threshold"]),
            drifted=status == "FAIL",
        )
    missing = [c for c in columns if c not in per_column]
    if missing:
        raise RuntimeError(f"Evidently returned no ValueDrift for columns {missing}.")

    ordered = [per_column[c] for c in columns]
    drifted = [c.column for c in ordered if c.drifted]
    count = counts[0]["value"]
    if int(count["count"]) != len(drifted):  # two views of one computation: they must agree
        raise RuntimeError(
            f"Evidently counted {int(count['count'])} drifted columns, but its per-column tests fail for {drifted}."
        )
    return DriftResult(
        drift_share=float(count["share"]),
        drifted_columns=drifted,
        n_columns=len(ordered),
        columns=ordered,
        snapshot=snapshot,
    )


def save_report(result: DriftResult, path: Path) -> Path:
    """Write the drift report as a standalone HTML file.

    Args:
        result: A result of `compute_drift`.
        path: Where to write; parent folders are created.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Snapshot.save_html silently writes nothing when given a Path (it only handles str): pass a str.
    result.snapshot.save_html(str(path))
    if not path.is_file():
        raise RuntimeError(f"Evidently did not write the report to {path}.")
    return path
