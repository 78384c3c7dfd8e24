from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from flows.lib.drift import compute_drift, save_report


@pytest.fixture(scope="module")
def shifted(iris: pd.DataFrame) -> pd.DataFrame:
    """iris with both petal measurements scaled by 1.8."""
    frame = iris.copy()
    frame[["petal_length", "petal_width"]] *= 1.8
    return frame


def test_identical_samples_do_not_drift(iris: pd.DataFrame, iris_features: list[str]) -> None:
    result = compute_drift(iris, iris.copy(), columns=iris_features)

    assert result.drifted_columns == []
    assert result.drift_share == 0.0
    assert result.n_columns == 4
    assert [c.column for c in result.columns] == iris_features


def test_scaled_petals_drift(iris: pd.DataFrame, shifted: pd.DataFrame, iris_features: list[str]) -> None:
    result = compute_drift(iris, shifted, columns=iris_features)

    assert result.drifted_columns == ["petal_length", "petal_width"]
    assert result.drift_share == 0.5
    # 150 reference rows: Evidently picks K-S, and reports it by id like an explicit choice.
    assert {c.method for c in result.columns} == {"ks"}


@pytest.mark.parametrize("method", ["ks", "psi", "wasserstein"])
def test_method_override_is_honoured(
    iris: pd.DataFrame, shifted: pd.DataFrame, iris_features: list[str], method: str
) -> None:
    result = compute_drift(iris, shifted, columns=iris_features, method=method)

    assert [c.method for c in result.columns] == [method] * 4
    assert result.drifted_columns == ["petal_length", "petal_width"]


def test_verdict_direction_for_p_values_and_distances(
    iris: pd.DataFrame, shifted: pd.DataFrame, iris_features: list[str]
) -> None:
    """K-S scores are p-values (drift when small), Wasserstein scores distances (drift when large)."""

    def by_column(method: str) -> dict:
        result = compute_drift(iris, shifted, columns=iris_features, method=method)
        return {c.column: c for c in result.columns}

    ks, ws = by_column("ks"), by_column("wasserstein")

    assert ks["sepal_length"].score == pytest.approx(1.0) and not ks["sepal_length"].drifted
    assert ks["petal_length"].score < ks["petal_length"].threshold and ks["petal_length"].drifted
    assert ws["sepal_length"].score == pytest.approx(0.0) and not ws["sepal_length"].drifted
    assert ws["petal_length"].score >= ws["petal_length"].threshold and ws["petal_length"].drifted


def test_threshold_override_is_honoured(iris: pd.DataFrame, shifted: pd.DataFrame, iris_features: list[str]) -> None:
    result = compute_drift(iris, shifted, columns=iris_features, method="wasserstein", threshold=10.0)

    assert [c.threshold for c in result.columns] == [10.0] * 4
    assert result.drifted_columns == []


def test_per_column_method_overrides_the_default(
    iris: pd.DataFrame, shifted: pd.DataFrame, iris_features: list[str]
) -> None:
    result = compute_drift(
        iris,
        shifted,
        columns=iris_features,
        method="ks",
        per_column_method={"petal_width": "psi"},
        per_column_threshold={"petal_width": 100.0},
    )

    methods = {c.column: (c.method, c.threshold) for c in result.columns}
    assert methods["petal_width"] == ("psi", 100.0)
    assert methods["sepal_length"] == ("ks", 0.05)
    assert result.drifted_columns == ["petal_length"]


def test_target_is_never_checked(iris: pd.DataFrame, shifted: pd.DataFrame) -> None:
    current = shifted.assign(species="setosa")

    result = compute_drift(iris, current, target="species")

    assert result.n_columns == 4
    assert "species" not in [c.column for c in result.columns]


def test_categorical_columns_and_string_numbers(iris: pd.DataFrame, iris_features: list[str]) -> None:
    current = iris.assign(species="setosa")
    current["sepal_length"] = current["sepal_length"].astype(str)

    result = compute_drift(iris, current, columns=[*iris_features, "species"])

    assert result.drifted_columns == ["species"]
    assert {c.column: c.method for c in result.columns}["species"] == "chisquare"


def test_missing_column_raises(iris: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="not in the current"):
        compute_drift(iris, iris.drop(columns=["petal_width"]), columns=["petal_width"])


def test_report_is_written_as_html(iris: pd.DataFrame, shifted: pd.DataFrame, tmp_path: Path) -> None:
    result = compute_drift(iris, shifted, target="species")

    path = save_report(result, tmp_path / "reports" / "nested" / "drift.html")

    assert path == tmp_path / "reports" / "nested" / "drift.html"
    text = path.read_text(encoding="utf-8")
    assert "<html" in text[:500].lower() and text.rstrip().lower().endswith("</html>")
    assert "petal_length" in text
