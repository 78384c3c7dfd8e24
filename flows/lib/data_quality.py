"""Data quality of a window against the reference, checked before any drift test: schema, missing values, ranges,
categories.

A schema failure (a reference column missing from the window, values of the wrong type) makes the window invalid:
no drift verdict is given on it. The other findings are per column and count like drift of that column: a missing
share above the reference's, values outside the reference's range, categories the reference never had. Each is
flagged only when it exceeds both a tolerance and what chance allows (a one-sided test at `alpha`): the count of
values outside the range of `n` reference values is beta-binomial with mean share 2/(n+1) (`range_p_value`), and a
fresh value has an unseen category with about the share of categories seen once in the reference (Good-Turing, a
binomial test), so small references do not flag every window.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pandas as pd
from pandas.api import types as ptypes

MISSING = "missing"
ALL_MISSING = "all_missing"
OUT_OF_RANGE = "out_of_range"
UNSEEN = "unseen_category"
WRONG_TYPE = "wrong_type"
ABSENT = "absent"


@dataclass
class QualityRules:
    """When a column's quality finding counts."""

    missing_tolerance: float = 0.05
    """Flag when the window's missing share exceeds the reference's by more than this (and by more than chance)."""
    range_tolerance: float = 0.02
    """Flag when more than this share of the window lies outside the reference range (and more than chance)."""
    unseen_tolerance: float = 0.02
    """Flag when more than this share of the window has categories the reference lacks (and more than chance)."""
    alpha: float = 1e-4
    """Level of the one-sided binomial test that the finding is more than chance."""


@dataclass
class ColumnQuality:
    """Quality of one column of the window."""

    column: str
    kind: str
    reference_missing: float
    current_missing: float
    out_of_range: float
    """Share of the window's values outside [min, max] of the reference (numerical)."""
    unseen: float
    """Share of the window's values with a category the reference lacks (categorical)."""
    unseen_values: list[str]
    wrong_type: float
    """Share of the window's values that are not numbers in a numerical column."""
    issues: list[str] = field(default_factory=list)


@dataclass
class QualityReport:
    """Quality of a window: per column, plus the schema."""

    columns: list[ColumnQuality]
    absent_columns: list[str]
    extra_columns: list[str]

    @property
    def schema_errors(self) -> list[str]:
        """What makes the window invalid (no drift verdict on it)."""
        errors = [f"column {c!r} is absent from the window" for c in self.absent_columns]
        errors += [
            f"column {c.column!r} has {c.wrong_type:.0%} values that are not numbers"
            for c in self.columns
            if WRONG_TYPE in c.issues
        ]
        return errors

    @property
    def valid(self) -> bool:
        return not self.schema_errors

    def flagged(self) -> dict[str, list[str]]:
        """Columns with a quality finding, and which."""
        out = {c: [ABSENT] for c in self.absent_columns}
        out |= {c.column: list(c.issues) for c in self.columns if c.issues}
        return out

    def testable(self) -> list[str]:
        """Columns a drift test can run on: present, right type, not entirely missing."""
        return [c.column for c in self.columns if not ({ALL_MISSING, WRONG_TYPE} & set(c.issues))]

    def as_dict(self) -> dict:
        return {
            "columns": [asdict(c) for c in self.columns],
            "absent_columns": self.absent_columns,
            "extra_columns": self.extra_columns,
            "schema_errors": self.schema_errors,
        }


def range_p_value(outside: int, rows: int, reference_rows: int) -> float:
    """Chance of at least `outside` of `rows` fresh values outside the range of `reference_rows` values, no drift.

    The range of n reference values covers a Beta(n - 1, 2) share of the distribution, so the count outside is
    beta-binomial(rows, 2, n - 1) for continuous data (fewer with ties): a binomial at the mean rate 2/(n+1) would
    ignore that a small reference's range is itself random, and flag every window of an unlucky reference.
    """
    from scipy.stats import betabinom

    if reference_rows < 2 or outside <= 0:
        return 1.0
    return float(betabinom.sf(outside - 1, rows, 2, reference_rows - 1))


def _exceeds(count: int, n: int, expected: float, observed_share: float, tolerance: float, alpha: float) -> bool:
    from scipy.stats import binomtest

    if n == 0 or observed_share <= tolerance:
        return False
    expected = min(max(expected, 1e-9), 1.0)
    if expected >= 1.0:
        return False
    return binomtest(count, n, expected, alternative="greater").pvalue < alpha


def check_quality(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: list[str],
    kinds: dict[str, str],
    rules: QualityRules | None = None,
) -> QualityReport:
    """Check the window's schema and per-column quality against the reference.

    Args:
        reference: The reference rows.
        current: The window, with every column its records had (absent and extra columns are findings).
        columns: The columns the model takes (reference feature columns).
        kinds: `numerical` or `categorical` per column.
        rules: Tolerances and test level.

    Returns:
        The findings; `valid` is False on a schema failure.
    """
    tally = QualityTally(reference, columns, kinds, rules)
    tally.add(current)
    return tally.report()


@dataclass
class _Counts:
    """What a window's values of one column added up to so far."""

    missing: int = 0
    """Values that are missing (NaN or absent from the record)."""
    not_number: int = 0
    """Values present but not numbers (numerical columns)."""
    present: int = 0
    """Values present (and numbers, for a numerical column)."""
    outside: int = 0
    """Present values outside the reference's range (numerical)."""
    unseen: int = 0
    """Present values with a category the reference lacks (categorical)."""
    unseen_values: list[str] = field(default_factory=list)
    """The smallest (sorted) distinct unseen categories, at most `_UNSEEN_SHOWN`."""


_UNSEEN_SHOWN = 10


class QualityTally:
    """Data quality of a window added up one chunk of rows at a time: counts per column, never the rows.

    `check_quality` is one tally over the whole window; the drift flow feeds it a page of the inference log at a time,
    so the findings cover every row of a window however large, while only the page is held.
    """

    def __init__(
        self, reference: pd.DataFrame, columns: list[str], kinds: dict[str, str], rules: QualityRules | None = None
    ):
        self.columns, self.kinds, self.rules = list(columns), dict(kinds), rules or QualityRules()
        self.rows = 0
        self.seen: dict[str, None] = {}
        """Every column a chunk had, in order of first appearance (a set that keeps order)."""
        self._counts = {c: _Counts() for c in self.columns}
        self._reference: dict[str, tuple] = {}
        for column in self.columns:
            ref = reference[column]
            ref_missing = float(ref.isna().mean()) if len(ref) else 0.0
            if self.kinds[column] == "numerical":
                present = pd.to_numeric(ref, errors="coerce").dropna()
                bounds = (present.min(), present.max()) if len(present) else None
                self._reference[column] = (ref_missing, bounds, len(present))
            else:
                counts = ref.dropna().astype(str).value_counts()
                # Good-Turing: the share of categories seen once is the chance a fresh value is a new one.
                expected = float((counts == 1).sum()) / float(counts.sum()) if len(counts) else 0.0
                self._reference[column] = (ref_missing, counts.index, expected)

    def add(self, chunk: pd.DataFrame) -> None:
        """Count a chunk of the window's rows (its columns as the records had them)."""
        self.seen.update(dict.fromkeys(chunk.columns))
        self.rows += len(chunk)
        for column in self.columns:
            counts = self._counts[column]
            if column not in chunk.columns:  # no record of this chunk had it: all missing here
                counts.missing += len(chunk)
                continue
            cur = chunk[column]
            if self.kinds[column] == "numerical":
                self._add_numbers(column, cur, counts)
            else:
                self._add_categories(column, cur, counts)

    def _add_numbers(self, column: str, cur: pd.Series, counts: _Counts) -> None:
        numbers = pd.to_numeric(cur, errors="coerce") if not ptypes.is_numeric_dtype(cur.dtype) else cur
        if ptypes.is_bool_dtype(numbers.dtype):
            numbers = numbers.astype(float)
        missing = numbers.isna()
        not_number = missing & cur.notna()
        counts.not_number += int(not_number.sum())
        counts.missing += int(missing.sum()) - int(not_number.sum())
        present = numbers.astype(float).dropna()
        counts.present += len(present)
        bounds = self._reference[column][1]
        if len(present) and bounds is not None:
            counts.outside += int(((present < bounds[0]) | (present > bounds[1])).sum())

    def _add_categories(self, column: str, cur: pd.Series, counts: _Counts) -> None:
        counts.missing += int(cur.isna().sum())
        present = cur.dropna().astype(str)
        counts.present += len(present)
        known = self._reference[column][1]
        if len(present) and len(known):
            new = ~present.isin(known)
            counts.unseen += int(new.sum())
            values = set(counts.unseen_values) | set(present[new].unique().tolist())
            counts.unseen_values = sorted(values)[:_UNSEEN_SHOWN]

    def report(self) -> QualityReport:
        """The findings over every row added so far; `valid` is False on a schema failure."""
        rules, n = self.rules, self.rows
        absent = [c for c in self.columns if c not in self.seen]
        extra = [c for c in self.seen if c not in self.columns]
        out = []
        for column in self.columns:
            if column in absent:
                continue
            counts = self._counts[column]
            ref_missing = self._reference[column][0]
            issues: list[str] = []
            wrong = out_of_range = unseen = 0.0
            unseen_values: list[str] = []
            if self.kinds[column] == "numerical":
                # Shares as the frame's means compute them (sum / n), so a tally and a frame agree to the bit.
                wrong = counts.not_number / n if n else 0.0
                if wrong > 0:
                    issues.append(WRONG_TYPE)
                cur_missing = (counts.missing + counts.not_number) / n - counts.not_number / n if n else 0.0
                reference_rows = self._reference[column][2]
                if counts.present and reference_rows:
                    out_of_range = counts.outside / counts.present
                    if (
                        out_of_range > rules.range_tolerance
                        and range_p_value(counts.outside, counts.present, reference_rows) < rules.alpha
                    ):
                        issues.append(OUT_OF_RANGE)
            else:
                cur_missing = counts.missing / n if n else 0.0
                known, expected = self._reference[column][1], self._reference[column][2]
                if counts.present and len(known):
                    unseen = counts.unseen / counts.present
                    unseen_values = counts.unseen_values
                    if _exceeds(counts.unseen, counts.present, expected, unseen, rules.unseen_tolerance, rules.alpha):
                        issues.append(UNSEEN)
            missing_count = int(round(cur_missing * n))
            if n and missing_count == n:
                issues.append(ALL_MISSING)
            elif _exceeds(
                missing_count, n, ref_missing, cur_missing - ref_missing, rules.missing_tolerance, rules.alpha
            ):
                issues.append(MISSING)
            out.append(
                ColumnQuality(
                    column=column,
                    kind=self.kinds[column],
                    reference_missing=ref_missing,
                    current_missing=cur_missing,
                    out_of_range=out_of_range,
                    unseen=unseen,
                    unseen_values=[str(v) for v in unseen_values],
                    wrong_type=wrong,
                    issues=issues,
                )
            )
        return QualityReport(columns=out, absent_columns=absent, extra_columns=extra)
