from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from contracts.api import InferenceRecord
from flows.lib.data import align_features, align_target, load_dataset, records_to_frame


def record(features: dict, label: str | None, request_id: str = "r") -> InferenceRecord:
    return InferenceRecord(
        request_id=request_id,
        ts=datetime(2024, 1, 1, tzinfo=UTC),
        user_id="u",
        arm="champion",
        model_version="1",
        experiment_id="e",
        features=features,
        prediction="setosa",
        label=label,
        latency_ms=1.0,
    )


def test_iris_is_bundled_with_named_columns_and_classes(iris: pd.DataFrame) -> None:
    assert iris.shape == (150, 5)
    assert list(iris.columns) == ["sepal_length", "sepal_width", "petal_length", "petal_width", "species"]
    assert all(iris[c].dtype == "float64" for c in iris.columns[:4])
    assert sorted(iris["species"].unique()) == ["setosa", "versicolor", "virginica"]
    assert isinstance(iris["species"].iloc[0], str)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_file_round_trip(iris: pd.DataFrame, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        iris.to_csv(path, index=False)
    else:
        iris.to_parquet(path, index=False)

    loaded = load_dataset(str(path), "species")

    pd.testing.assert_frame_equal(loaded, iris)


@pytest.mark.parametrize(
    ("name", "target", "message"),
    [
        ("missing.csv", "species", "not found"),
        ("data.xlsx", "species", "Unsupported"),
        ("data.csv", "label", "not in"),
        ("iris", "label", "not in"),
    ],
)
def test_bad_inputs_raise_value_error(iris: pd.DataFrame, tmp_path: Path, name: str, target: str, message: str) -> None:
    iris.to_csv(tmp_path / "data.csv", index=False)
    (tmp_path / "data.xlsx").write_bytes(b"")
    dataset = name if name == "iris" else str(tmp_path / name)

    with pytest.raises(ValueError, match=message):
        load_dataset(dataset, target)


def test_records_to_frame_keeps_column_order_and_only_labelled_rows() -> None:
    records = [
        record({"b": 2.0, "a": 1}, "x", "r1"),
        record({"a": 3.5, "b": 4.0}, None, "r2"),
        record({"a": 5.0}, "y", "r3"),
    ]

    features = records_to_frame(records, ["a", "b"])
    labelled = records_to_frame(records, ["a", "b"], target="t")

    expected = pd.DataFrame({"a": [1.0, 3.5, 5.0], "b": [2.0, 4.0, float("nan")]})
    pd.testing.assert_frame_equal(features, expected)
    expected_labelled = pd.DataFrame(
        {"a": [1.0, 5.0], "b": [2.0, float("nan")], "t": pd.Series(["x", "y"], dtype=object)}
    )
    pd.testing.assert_frame_equal(labelled, expected_labelled)


def test_records_to_frame_of_nothing_has_the_columns() -> None:
    frame = records_to_frame([], ["a", "b"], target="t")

    assert list(frame.columns) == ["a", "b", "t"]
    assert frame.empty


@pytest.mark.parametrize(
    ("labels", "like", "expected"),
    [
        (["0", "2"], pd.Series([1, 2], dtype="int64"), pd.Series([0, 2], dtype="int64")),
        (["1.5", "2"], pd.Series([1.0]), pd.Series([1.5, 2.0])),
        (["True", "false"], pd.Series([True]), pd.Series([True, False])),
        (["setosa"], pd.Series(["virginica"], dtype=object), pd.Series(["setosa"], dtype=object)),
        (
            ["b"],
            pd.Series(["a", "b"], dtype="category"),
            pd.Series(["b"], dtype=pd.CategoricalDtype(["a", "b"])),
        ),
    ],
)
def test_align_target_casts_string_labels_back(labels: list[str], like: pd.Series, expected: pd.Series) -> None:
    pd.testing.assert_series_equal(align_target(pd.Series(labels, dtype=object), like), expected)


@pytest.mark.parametrize(
    ("labels", "like"),
    [(["setosa"], pd.Series([1])), (["1.5"], pd.Series([1])), (["maybe"], pd.Series([True]))],
)
def test_align_target_refuses_what_does_not_fit(labels: list[str], like: pd.Series) -> None:
    with pytest.raises(ValueError, match="Cannot cast"):
        align_target(pd.Series(labels, dtype=object), like)


def test_align_features_follows_reference_dtypes() -> None:
    reference = pd.DataFrame({"x": [1.0], "n": [1], "c": ["a"]})
    window = pd.DataFrame({"x": [1, 2], "n": [1.0, None], "c": ["b", "c"]})

    aligned = align_features(window, reference)

    assert aligned.dtypes.to_dict() == {"x": "float64", "n": "float64", "c": "object"}
