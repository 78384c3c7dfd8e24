"""Data quality of a window against the reference: schema failures, per-column findings, and no false finding."""

from __future__ import annotations

import numpy as np
import pandas as pd

from flows.lib.artifacts import quality_table
from flows.lib.data_quality import (
    ABSENT,
    ALL_MISSING,
    MISSING,
    OUT_OF_RANGE,
    UNSEEN,
    WRONG_TYPE,
    check_quality,
    range_p_value,
)

KINDS = {"x": "numerical", "kind": "categorical"}


def frames(rows: int = 300, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    reference = pd.DataFrame({"x": rng.normal(size=2000), "kind": rng.choice(["a", "b"], 2000)})
    current = pd.DataFrame({"x": rng.normal(size=rows), "kind": rng.choice(["a", "b"], rows)})
    return reference, current


def test_a_clean_window_has_no_finding() -> None:
    reference, current = frames()
    report = check_quality(reference, current, ["x", "kind"], KINDS)
    assert report.valid and report.flagged() == {} and report.testable() == ["x", "kind"]


def test_each_finding_is_attributed_to_its_column() -> None:
    reference, current = frames()
    current["x"] = current["x"].where(np.arange(300) % 4 != 0, np.nan)  # 25% missing
    current["kind"] = np.where(np.arange(300) % 5 == 0, "zzz", current["kind"])
    report = check_quality(reference, current, ["x", "kind"], KINDS)
    assert report.flagged() == {"x": [MISSING], "kind": [UNSEEN]}
    assert report.columns[1].unseen_values == ["zzz"]

    shifted = current.assign(x=current["x"] + 10)
    assert OUT_OF_RANGE in check_quality(reference, shifted, ["x", "kind"], KINDS).flagged()["x"]


def test_schema_failures_make_the_window_invalid() -> None:
    reference, current = frames()
    current["x"] = current["x"].astype(object)
    current.loc[:9, "x"] = "ten"
    report = check_quality(reference, current.drop(columns=["kind"]).assign(extra=1), ["x", "kind"], KINDS)
    assert not report.valid
    assert report.flagged() == {"kind": [ABSENT], "x": [WRONG_TYPE]}
    assert report.extra_columns == ["extra"] and len(report.schema_errors) == 2
    assert "**absent**" in quality_table(report)


def test_an_all_missing_column_is_a_finding_not_a_test() -> None:
    reference, current = frames()
    report = check_quality(reference, current.assign(x=np.nan), ["x", "kind"], KINDS)
    assert report.valid and report.flagged() == {"x": [ALL_MISSING]} and report.testable() == ["kind"]


def test_the_range_law_accounts_for_a_small_reference() -> None:
    # 300 fresh values against the range of 150: 10 outside is unremarkable (the range itself is random) ...
    assert range_p_value(10, 300, 150) > 0.01
    # ... against the range of 100,000 it is not.
    assert range_p_value(10, 300, 100_000) < 1e-10
    assert range_p_value(0, 300, 150) == 1.0
