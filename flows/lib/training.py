"""Training a classifier with PyCaret, measuring what its candidates cost to serve, and scoring pipelines."""

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


SERVING_BATCH_ROWS = 32
"""Rows of the batch call in a serving-cost measurement (the router batches concurrent requests)."""


@dataclass(frozen=True)
class ServingCost:
    """What one `predict` call of a pipeline costs on this machine, in CPU milliseconds of the calling thread.

    CPU time rather than wall time: a busy machine stretches wall time for every model alike, while the CPU a
    model burns per call is its own. The router measures the same quantity per request (`compute_ms`).
    """

    single_row_ms: float
    """Median CPU time of a call with one row."""
    batch_ms: float
    """Median CPU time of a call with `batch_rows` rows."""
    batch_rows: int = SERVING_BATCH_ROWS

    def as_metrics(self) -> dict[str, float]:
        """The cost as MLflow metrics."""
        return {"predict_ms_1row": self.single_row_ms, f"predict_ms_{self.batch_rows}rows": self.batch_ms}


def measure_serving_cost(pipeline: Any, features: pd.DataFrame, *, repeats: int = 15) -> ServingCost:
    """Median CPU time of `pipeline.predict` on one row and on a batch, after one warm-up call of each.

    Args:
        pipeline: Anything with `predict(DataFrame)` taking the raw feature columns.
        features: Rows to predict (the batch repeats rows when there are fewer than `SERVING_BATCH_ROWS`).
        repeats: Calls per measurement; the median is reported.

    Returns:
        The cost per call.
    """
    if features.empty:
        raise ValueError("No rows to measure the serving cost on.")
    one = features.head(1)
    batch = features.sample(n=SERVING_BATCH_ROWS, replace=len(features) < SERVING_BATCH_ROWS, random_state=0)

    def median_ms(rows: pd.DataFrame) -> float:
        pipeline.predict(rows)  # warm-up: first calls pay lazy initialisation
        spent = []
        for _ in range(repeats):
            started = time.thread_time()
            pipeline.predict(rows)
            spent.append((time.thread_time() - started) * 1000)
        return float(np.median(spent))

    return ServingCost(single_row_ms=median_ms(one), batch_ms=median_ms(batch))


@dataclass(frozen=True)
class Candidate:
    """One of the best models of compare_models, with what it costs to serve."""

    model_id: str
    model_name: str
    cv_f1: float
    cv_accuracy: float
    serving_cost: ServingCost
    within_budget: bool


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
    candidates: list[Candidate] = field(default_factory=list)
    """The best models of compare_models by CV F1, each with its serving cost (the winner among them)."""
    serving_cost: ServingCost | None = None
    """Serving cost of the finalized pipeline (the one that is registered)."""
    latency_budget_ms: float | None = None
    """CPU ms per single-row predict a candidate had to stay within (None: no budget)."""

    @property
    def within_budget(self) -> bool:
        """Whether the chosen model fits the latency budget (always True without one)."""
        return next((c.within_budget for c in self.candidates if c.model_id == self.model_id), True)

    @property
    def chosen_cost(self) -> ServingCost:
        """The serving cost the choice rested on (measured before finalizing), else the final pipeline's."""
        chosen = next((c.serving_cost for c in self.candidates if c.model_id == self.model_id), None)
        assert chosen is not None or self.serving_cost is not None, "no serving cost was measured"
        return chosen or self.serving_cost

    def candidate_table(self) -> dict[str, list]:
        """The candidates as columns (for an MLflow table artifact)."""
        return {
            "model_id": [c.model_id for c in self.candidates],
            "model": [c.model_name for c in self.candidates],
            "cv_f1": [c.cv_f1 for c in self.candidates],
            "cv_accuracy": [c.cv_accuracy for c in self.candidates],
            "predict_ms_1row": [c.serving_cost.single_row_ms for c in self.candidates],
            f"predict_ms_{SERVING_BATCH_ROWS}rows": [c.serving_cost.batch_ms for c in self.candidates],
            "within_budget": [c.within_budget for c in self.candidates],
            "chosen": [c.model_id == self.model_id for c in self.candidates],
        }


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
    candidates: int = 3,
    latency_budget_ms: float | None = None,
) -> TrainResult:
    """Pick the best of `models` by cross-validated F1 that fits the latency budget, score it, refit on all.

    compare_models ranks `models` by CV F1; the best `candidates` of them are timed as they would serve (PyCaret's
    preprocessing plus the model, fitted on the training split) and the best one whose single-row predict costs at
    most `latency_budget_ms` of CPU wins. When none fits, the cheapest wins and `TrainResult.within_budget` is
    False, so the gate can refuse it with the reason.

    Args:
        data: Features and target.
        target: Name of the target column.
        models: PyCaret model ids for compare_models, e.g. `["lr", "dt", "rf"]`.
        folds: Cross-validation folds.
        session_id: Random seed, for reproducible splits and models.
        n_jobs: Parallel jobs for PyCaret. 1 is several times faster on small data (process start-up
            dominates); use -1 for large data.
        candidates: How many of the best models are timed and considered.
        latency_budget_ms: CPU milliseconds a single-row predict may cost; None: no budget.

    Returns:
        The finalized pipeline, which takes raw feature columns, plus its metrics, its serving cost, the candidates
        it was chosen from and the holdout rows.

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
    best = None
    with _collect_warnings(caught):
        exp, ranked, grid = _compare(
            experiment_cls(), data, target, models, folds, session_id, n_jobs, timings, max(1, candidates)
        )
        if ranked:
            started = time.perf_counter()
            timed = _time_candidates(exp, ranked, grid, data.drop(columns=[target]), latency_budget_ms)
            timings["serving_cost"] = time.perf_counter() - started
            chosen = _choose(timed)
            best = ranked[timed.index(chosen)]
            row = grid.loc[chosen.model_id]
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
            final_cost = measure_serving_cost(pipeline, data.drop(columns=[target]))
    if best is None:
        raise RuntimeError(f"PyCaret could not train any of {models}. Warnings: {caught[-5:]}")

    return TrainResult(
        pipeline=pipeline,
        model_id=chosen.model_id,
        cv_metrics=cv_metrics,
        holdout_metrics=holdout_metrics,
        holdout=holdout,
        model_name=chosen.model_name,
        timings=timings,
        warnings=caught,
        candidates=timed,
        serving_cost=final_cost,
        latency_budget_ms=latency_budget_ms,
    )


def _time_candidates(
    exp: Any, ranked: list[Any], grid: pd.DataFrame, features: pd.DataFrame, budget_ms: float | None
) -> list[Candidate]:
    """Each ranked model's serving cost, timed inside PyCaret's preprocessing pipeline as it would serve."""
    from pycaret.internal.pipeline import estimator_pipeline

    timed = []
    for model in ranked:
        model_id = exp._get_model_id(model)  # the grid's index: PyCaret's id of the model's class
        row = grid.loc[model_id]
        with estimator_pipeline(exp.pipeline, model) as pipeline:
            cost = measure_serving_cost(pipeline, features)
        timed.append(
            Candidate(
                model_id=str(model_id),
                model_name=str(row.get("Model", model_id)),
                cv_f1=float(row["F1"]),
                cv_accuracy=float(row["Accuracy"]),
                serving_cost=cost,
                within_budget=budget_ms is None or cost.single_row_ms <= budget_ms,
            )
        )
    return timed


def _choose(timed: list[Candidate]) -> Candidate:
    """The best-ranked candidate within the budget, or the cheapest when none fits."""
    fitting = [c for c in timed if c.within_budget]
    if fitting:
        return fitting[0]
    return min(timed, key=lambda c: c.serving_cost.single_row_ms)


def _compare(
    exp: Any,
    data: pd.DataFrame,
    target: str,
    models: list[str],
    folds: int,
    session_id: int,
    n_jobs: int | None,
    timings: dict[str, float],
    n_select: int,
) -> tuple[Any, list[Any], pd.DataFrame]:
    """PyCaret's setup and compare_models: the experiment, the best `n_select` models (best first), the grid."""
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
    ranked = exp.compare_models(include=list(models), n_select=n_select, sort="F1", verbose=False)
    grid = exp.pull()
    timings["compare_models"] = time.perf_counter() - started
    if not isinstance(ranked, list):  # n_select=1 returns the model itself; every model failing returns []
        ranked = [ranked]
    return exp, ranked, grid


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
