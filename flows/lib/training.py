"""Training a classifier with PyCaret and scoring pipelines with scikit-learn metrics."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from flows.lib.data import align_target

# PyCaret's CV grid columns worth keeping, renamed. AUC is left out on purpose: PyCaret 3.3.2 reports
# multiclass AUC as 0.0 for some models (lr, lightgbm), so nothing may sort or gate on it.
_CV_COLUMNS = {
    "Accuracy": "accuracy",
    "Recall": "recall",
    "Prec.": "precision",
    "F1": "f1",
    "Kappa": "kappa",
    "MCC": "mcc",
}


@dataclass
class TrainResult:
    """The outcome of one training run."""

    pipeline: Any
    """PyCaret's finalized pipeline (preprocessing + best model), refit on all of the data."""
    model_id: str
    """PyCaret id of the best model, e.g. `lr`."""
    cv_metrics: dict[str, float]
    """Mean cross-validation scores of the best model on the training split (PyCaret's grid: recall,
    precision and f1 are weighted averages for multiclass targets)."""
    holdout_metrics: dict[str, float]
    """accuracy, f1_macro, precision_macro, recall_macro of the best model on PyCaret's holdout split
    (computed before finalizing, so the holdout was not seen in fitting)."""
    holdout: pd.DataFrame
    """The holdout rows, features and target, as they were in the input data."""
    model_name: str = ""
    """Human-readable name of the best model, e.g. `Logistic Regression`."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent in setup, compare_models, holdout scoring and finalize_model."""
    warnings: list[str] = field(default_factory=list)
    """Distinct warnings raised while training (PyCaret is noisy: see `_collect_warnings`)."""


def _classification_experiment():
    """Import PyCaret's ClassificationExperiment without its import-time side effects.

    Importing PyCaret opens a `logs.log` file in the working directory and redirects every Python warning
    of the process into it. Unless the caller chose a log path, send that log to the null device, and hand
    warnings back to the host process (Prefect, pytest) once the import is done.
    """
    os.environ.setdefault("PYCARET_CUSTOM_LOGGING_PATH", os.devnull)
    from pycaret.classification import ClassificationExperiment
    from pycaret.internal import logging as pycaret_logging

    pycaret_logging.captureWarnings(False)
    return ClassificationExperiment


@contextmanager
def _collect_warnings(into: list[str]) -> Iterator[None]:
    """Collect the warnings raised inside, one line per distinct warning, instead of printing them.

    PyCaret raises dozens per run (the multiclass AUC FitFailedWarning with a full traceback, pandas
    deprecations, sklearn's pos_label notes); printed, they drown a flow's log.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            seen = set(into)
            for w in caught:
                first_line = next((line for line in str(w.message).splitlines() if line.strip()), "")
                text = f"{w.category.__name__}: {first_line.strip()[:300]}"
                if text not in seen:
                    seen.add(text)
                    into.append(text)


def classification_metrics(y_true: Any, y_pred: Any) -> dict[str, float]:
    """accuracy, f1_macro, precision_macro and recall_macro of predictions against labels."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "f1_macro": float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "precision_macro": float(skm.precision_score(y_true, y_pred, average="macro", zero_division=0)),
        "recall_macro": float(skm.recall_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def train(
    data: pd.DataFrame,
    target: str,
    *,
    models: list[str],
    folds: int = 3,
    session_id: int = 42,
    n_jobs: int | None = 1,
) -> TrainResult:
    """Pick the best of `models` by cross-validated F1 with PyCaret, score it on the holdout, refit on all.

    Args:
        data: Features and target.
        target: Name of the target column.
        models: PyCaret model ids for compare_models, e.g. `["lr", "dt", "rf"]`.
        folds: Cross-validation folds.
        session_id: Random seed, for reproducible splits and models.
        n_jobs: Parallel jobs for PyCaret. 1 is several times faster on small data (process start-up
            dominates); use -1 for large data.

    Returns:
        The finalized pipeline, which takes raw feature columns, plus its metrics and the holdout rows.

    Raises:
        ValueError: When `target` is missing or `models` is empty.
        RuntimeError: When no model could be trained.
    """
    if target not in data.columns:
        raise ValueError(f"Target column {target!r} is not in the data (columns: {list(data.columns)}).")
    if not models:
        raise ValueError("No PyCaret model ids given to compare.")
    data = data.reset_index(drop=True)
    experiment_cls = _classification_experiment()
    timings: dict[str, float] = {}
    caught: list[str] = []
    with _collect_warnings(caught):
        exp, best, grid = _compare(experiment_cls(), data, target, models, folds, session_id, n_jobs, timings)
        if best is not None:
            # The grid is sorted like compare_models' choice: its first row is the best model (index = id).
            row = grid.iloc[0]
            model_id = str(grid.index[0])
            cv_metrics = {name: float(row[col]) for col, name in _CV_COLUMNS.items() if col in row.index}

            started = time.perf_counter()
            holdout = data.loc[exp.test.index]
            scored = exp.predict_model(best, verbose=False)
            predictions = scored.loc[holdout.index, "prediction_label"]
            holdout_metrics = classification_metrics(holdout[target], predictions)
            timings["holdout"] = time.perf_counter() - started

            started = time.perf_counter()
            pipeline = exp.finalize_model(best)
            timings["finalize_model"] = time.perf_counter() - started
    if best is None:
        raise RuntimeError(f"PyCaret could not train any of {models}. Warnings: {caught[-5:]}")

    return TrainResult(
        pipeline=pipeline,
        model_id=model_id,
        cv_metrics=cv_metrics,
        holdout_metrics=holdout_metrics,
        holdout=holdout,
        model_name=str(row.get("Model", model_id)),
        timings=timings,
        warnings=caught,
    )


def _compare(
    exp: Any,
    data: pd.DataFrame,
    target: str,
    models: list[str],
    folds: int,
    session_id: int,
    n_jobs: int | None,
    timings: dict[str, float],
) -> tuple[Any, Any, pd.DataFrame]:
    """PyCaret's setup and compare_models: the experiment, the best model (None if all failed), the grid."""
    started = time.perf_counter()
    exp.setup(
        data,
        target=target,
        session_id=session_id,
        fold=folds,
        n_jobs=n_jobs,
        verbose=False,
        html=False,
        log_experiment=False,  # broken with MLflow 3 (pycaret#4100): registry.py logs instead
        system_log=False,
    )
    timings["setup"] = time.perf_counter() - started

    started = time.perf_counter()
    best = exp.compare_models(include=list(models), n_select=1, sort="F1", verbose=False)
    grid = exp.pull()
    timings["compare_models"] = time.perf_counter() - started
    if isinstance(best, list):  # compare_models returns [] when every model failed
        best = best[0] if best else None
    return exp, best, grid


def evaluate(pipeline: Any, data: pd.DataFrame, target: str) -> dict[str, float]:
    """Score a pipeline on labelled data.

    Args:
        pipeline: Anything with `predict(X)` taking the raw feature columns.
        data: Features and target; every column but `target` goes to the pipeline.
        target: Name of the target column. Labels whose dtype differs from the predictions' (strings
            from the inference log against an integer model) are cast to the predictions' dtype first.

    Returns:
        accuracy, f1_macro, precision_macro and recall_macro.
    """
    if target not in data.columns:
        raise ValueError(f"Target column {target!r} is not in the data (columns: {list(data.columns)}).")
    if data.empty:
        raise ValueError("No rows to evaluate on.")
    features = data.drop(columns=[target])
    y_pred = pd.Series(np.asarray(pipeline.predict(features)), index=features.index)
    y_true = data[target]
    if y_true.dtype.kind != y_pred.dtype.kind:
        y_true = align_target(y_true, like=y_pred)
    return classification_metrics(y_true, y_pred)
