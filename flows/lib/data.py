"""Loading datasets and turning logged inference records into frames."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from pandas.api import types as ptypes

from contracts.api import InferenceRecord

IRIS = "iris"
IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
IRIS_TARGET = "species"

_READERS = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".pq": pd.read_parquet}


def load_iris_frame() -> pd.DataFrame:
    """The iris data bundled with scikit-learn (no network): four float features and `species` names."""
    from sklearn.datasets import load_iris

    bunch = load_iris(as_frame=True)
    frame = bunch.data.copy()
    frame.columns = IRIS_FEATURES
    frame = frame.astype("float64")
    frame[IRIS_TARGET] = pd.Series(bunch.target_names[bunch.target], index=frame.index, dtype=object)
    return frame


def load_dataset(dataset: str, target: str) -> pd.DataFrame:
    """Load the reference dataset.

    Args:
        dataset: `"iris"` for the bundled iris data, otherwise a path to a `.csv` or `.parquet` file.
        target: Name of the target column; it must exist in the data.

    Returns:
        The whole dataset, features and target.

    Raises:
        ValueError: When the file is missing, its suffix is unsupported, or `target` is not a column.
    """
    if dataset == IRIS:
        frame = load_iris_frame()
        source = "the bundled iris dataset"
    else:
        path = Path(dataset).expanduser()
        reader = _READERS.get(path.suffix.lower())
        if reader is None:
            raise ValueError(
                f"Unsupported dataset {dataset!r}: expected {IRIS!r} or a path ending in {', '.join(sorted(_READERS))}."
            )
        if not path.is_file():
            raise ValueError(f"Dataset file not found: {path}")
        frame = reader(path)
        source = str(path)
    if target not in frame.columns:
        raise ValueError(f"Target column {target!r} is not in {source} (columns: {list(frame.columns)}).")
    return frame


def records_to_frame(
    records: Sequence[InferenceRecord], feature_columns: list[str], target: str | None = None
) -> pd.DataFrame:
    """Turn logged inference records into a frame of features (and labels).

    Args:
        records: Records as the router's inference log returns them.
        feature_columns: Feature columns, in the order the frame should have them. A feature that a
            record lacks becomes NaN.
        target: When given, keep only labelled records and put their label (a string) in this column;
            cast it back with `align_target`.

    Returns:
        One row per (labelled) record, with a fresh index.
    """
    if target is not None:
        if target in feature_columns:
            raise ValueError(f"Target column {target!r} is also listed as a feature.")
        records = [r for r in records if r.label is not None]
    frame = pd.DataFrame.from_records([r.features for r in records], columns=feature_columns)
    frame = frame.reindex(columns=feature_columns)
    if target is not None:
        frame[target] = pd.Series([r.label for r in records], dtype=object)
    return frame.reset_index(drop=True)


def align_target(series: pd.Series, like: pd.Series) -> pd.Series:
    """Cast labels that travelled as strings back to the dtype of the reference target.

    Args:
        series: Labels, typically strings from the inference log.
        like: The reference target whose dtype the labels should get.

    Returns:
        The labels with `like`'s dtype (same index and name as `series`).

    Raises:
        ValueError: When a label cannot be cast (for example `"setosa"` to an integer target).
    """
    dtype = like.dtype
    try:
        if ptypes.is_bool_dtype(dtype):
            mapping = {"true": True, "1": True, "false": False, "0": False}
            lowered = series.astype(str).str.strip().str.lower()
            unknown = sorted(set(lowered) - set(mapping))
            if unknown:
                raise ValueError(f"not booleans: {unknown[:5]}")
            return lowered.map(mapping).astype(dtype)
        if ptypes.is_numeric_dtype(dtype):
            numbers = pd.to_numeric(series, errors="raise")
            if ptypes.is_integer_dtype(dtype) and not (numbers % 1 == 0).all():
                raise ValueError("labels with a fractional part for an integer target")
            return numbers.astype(dtype)
        if isinstance(dtype, pd.CategoricalDtype):
            categories = dtype.categories
            return align_target(series, pd.Series(categories)).astype(dtype)
        return series.astype(dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Cannot cast labels of {series.name!r} to the reference dtype {dtype}: {exc}") from exc


def align_features(frame: pd.DataFrame, like: pd.DataFrame) -> pd.DataFrame:
    """Cast the numeric feature columns of `frame` to the dtypes they have in `like` (the reference).

    Columns that `like` lacks, and non-numeric reference columns, are left alone.
    """
    out = frame.copy()
    for column in out.columns.intersection(like.columns):
        dtype = like[column].dtype
        if ptypes.is_numeric_dtype(dtype) and not ptypes.is_bool_dtype(dtype):
            numbers = pd.to_numeric(out[column], errors="raise")
            # An integer reference column can't hold NaN: widen to float instead of failing.
            if ptypes.is_integer_dtype(dtype) and numbers.isna().any():
                out[column] = numbers.astype("float64")
            else:
                out[column] = numbers.astype(dtype)
    return out
