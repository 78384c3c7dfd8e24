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
from flows.lib.training_policy import (
    ImbalanceCheck,
    ImbalancePolicy,
    ScalePlan,
    ScalePolicy,
    TuningOutcome,
    TuningPolicy,
    check_imbalance,
    keep_tuned,
    plan_scale,
    tuning_iterations,
)

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
    trained_rows: int = 0
    """Rows of the data it was cross-validated on (fewer than the training rows when sampled at scale)."""
    seconds_per_fold: float = 0.0
    """PyCaret's `TT (Sec)`: seconds of one cross-validation fold (fit and score)."""


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
    scale: ScalePlan | None = None
    """Which models trained on which rows with how many folds."""
    tuning: TuningOutcome | None = None
    """What tuning the winner did (None: tuning is off)."""
    tuned_cost: ServingCost | None = None
    """Serving cost of the tuned model (measured before finalizing), when it was tuned."""
    imbalance: ImbalanceCheck | None = None
    """The class balance of the training rows and whether training rebalanced it."""
    trained_rows: int = 0
    """Rows the final pipeline was fitted on (a seeded sample for a model sampled at scale)."""

    @property
    def tuned_kept(self) -> bool:
        """Whether the registered model is the tuned one."""
        return self.tuning is not None and self.tuning.kept

    @property
    def within_budget(self) -> bool:
        """Whether the chosen model fits the latency budget (always True without one)."""
        if self.tuned_kept and self.tuned_cost is not None:
            return self.latency_budget_ms is None or self.tuned_cost.single_row_ms <= self.latency_budget_ms
        return next((c.within_budget for c in self.candidates if c.model_id == self.model_id), True)

    @property
    def chosen_cost(self) -> ServingCost:
        """The serving cost the choice rested on (measured before finalizing), else the final pipeline's."""
        if self.tuned_kept and self.tuned_cost is not None:
            return self.tuned_cost
        chosen = next((c.serving_cost for c in self.candidates if c.model_id == self.model_id), None)
        assert chosen is not None or self.serving_cost is not None, "no serving cost was measured"
        return chosen or self.serving_cost

    leaderboard: list[dict[str, Any]] = field(default_factory=list)
    """Every model compare_models scored (PyCaret's grid, one row per model, with the rows it trained on)."""

    def leaderboard_table(self) -> dict[str, list]:
        """The full leaderboard as columns (for an MLflow table artifact)."""
        columns = list(dict.fromkeys(key for row in self.leaderboard for key in row))
        return {column: [row.get(column) for row in self.leaderboard] for column in columns}

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
            "trained_rows": [c.trained_rows for c in self.candidates],
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
    scale: ScalePolicy | None = None,
    tuning: TuningPolicy | None = None,
    imbalance: ImbalancePolicy | None = None,
) -> TrainResult:
    """Pick the best of `models` by cross-validated F1 that fits the latency budget, tune it, score it, refit on all.

    compare_models ranks `models` by CV F1; the best `candidates` of them are timed as they would serve (PyCaret's
    preprocessing plus the model, fitted on the training split) and the best one whose single-row predict costs at
    most `latency_budget_ms` of CPU wins. When none fits, the cheapest wins and `TrainResult.within_budget` is
    False, so the gate can refuse it with the reason.

    The winner is then tuned (`tune_model`, random search on F1, within the `tuning` budget) and the tuned model is
    kept only if it beats the untuned one on the same cross-validation folds and still fits the latency budget.

    At scale (`scale`, see `training_policy.plan_scale`) the folds drop, some models are left out, and models whose
    cost grows badly with rows are compared, tuned and fitted on a seeded stratified sample, in a PyCaret experiment
    of their own; every model's CV score comes from the rows it trained on.

    Args:
        data: Features and target.
        target: Name of the target column.
        models: PyCaret model ids for compare_models, e.g. `["lr", "dt", "rf"]`.
        folds: Cross-validation folds.
        session_id: Random seed, for reproducible splits, samples and models.
        n_jobs: Parallel jobs for PyCaret. 1 is several times faster on small data (process start-up
            dominates); use -1 for large data.
        candidates: How many of the best models are timed and considered.
        latency_budget_ms: CPU milliseconds a single-row predict may cost; None: no budget.
        scale: When and how to adapt to large data (None: never).
        tuning: The tuning budget (None: no tuning).
        imbalance: When to rebalance the classes (None: never).

    Returns:
        The finalized pipeline, which takes raw feature columns, plus its metrics, its serving cost, the candidates
        it was chosen from, the holdout rows, the scale plan, the tuning outcome and the class balance check.

    Raises:
        ValueError: When `target` is missing or `models` is empty.
        RuntimeError: When no model could be trained.
    """
    if target not in data.columns:
        raise ValueError(f"Target column {target!r} is not in the data (columns: {list(data.columns)}).")
    if not models:
        raise ValueError("No PyCaret model ids given to compare.")
    data = data.reset_index(drop=True)
    balance = check_imbalance(data[target].astype(str).value_counts().to_dict(), imbalance)
    plan = plan_scale(len(data), list(models), folds, scale)
    groups = [(data, plan.full, "")]
    if plan.sampled:
        groups.append((stratified_sample(data, target, plan.sample_rows, session_id), plan.sampled, "_sample"))
    features = data.drop(columns=[target])
    experiment_cls = _classification_experiment()
    timings: dict[str, float] = {}
    caught: list[str] = []
    best = None
    leaderboard: list[dict[str, Any]] = []
    with _collect_warnings(caught):
        ranked: list[_Ranked] = []
        for rows, group, suffix in groups:
            if group:
                setup = {"session_id": session_id, "fold": plan.folds, "n_jobs": n_jobs, "balance": balance}
                ranked += _compare(
                    experiment_cls(), rows, target, group, setup, timings, suffix, candidates, leaderboard
                )
        # Each experiment ranked its own models; merged by CV F1 (stable: full-data models first on a tie).
        ranked = sorted(ranked, key=lambda r: r.cv_f1, reverse=True)[: max(1, candidates)]
        if ranked:
            started = time.perf_counter()
            timed = _time_candidates(ranked, features, latency_budget_ms)
            timings["serving_cost"] = time.perf_counter() - started
            chosen = _choose(timed)
            winner = ranked[timed.index(chosen)]
            best, exp = winner.model, winner.exp
            cv_metrics = _cv_metrics(winner.row)

            tuned_cost, outcome = None, None
            if tuning is not None:
                started = time.perf_counter()
                outcome, tuned, tuned_grid, tuned_cost = _tune(winner, tuning, plan.folds, features, latency_budget_ms)
                timings["tune_model"] = time.perf_counter() - started
                if outcome.kept:
                    best, cv_metrics = tuned, _cv_metrics(tuned_grid.loc["Mean"])

            started = time.perf_counter()
            holdout = winner.data.loc[exp.test.index]
            scored = exp.predict_model(best, verbose=False)
            predictions = scored.loc[holdout.index, "prediction_label"]
            holdout_metrics = classification_metrics(holdout[target], predictions)
            timings["holdout"] = time.perf_counter() - started

            started = time.perf_counter()
            pipeline = exp.finalize_model(best)
            timings["finalize_model"] = time.perf_counter() - started
            final_cost = measure_serving_cost(pipeline, features)
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
        scale=plan,
        tuning=outcome,
        tuned_cost=tuned_cost,
        imbalance=balance,
        trained_rows=len(winner.data),
        leaderboard=leaderboard,
    )


def stratified_sample(data: pd.DataFrame, target: str, rows: int, seed: int) -> pd.DataFrame:
    """A seeded sample of about `rows` rows that keeps each class's share (every class keeps at least one row).

    Args:
        data: Features and target.
        target: Name of the target column.
        rows: Rows wanted.
        seed: Random seed.

    Returns:
        The sampled rows in their original order, with a fresh index.
    """
    if rows >= len(data):
        return data
    share = rows / len(data)
    parts = [
        group.sample(n=max(1, round(share * len(group))), random_state=seed)
        for _, group in data.groupby(target, observed=True, sort=True)
    ]
    return pd.concat(parts).sort_index().reset_index(drop=True)


@dataclass
class _Ranked:
    """A model that compare_models returned, with the experiment and rows it was cross-validated on."""

    exp: Any
    model: Any
    row: pd.Series
    """Its row of the compare_models grid."""
    data: pd.DataFrame

    @property
    def model_id(self) -> str:
        return str(self.row.name)

    @property
    def cv_f1(self) -> float:
        return float(self.row["F1"])


def _cv_metrics(row: pd.Series) -> dict[str, float]:
    """PyCaret grid columns worth keeping, renamed, from one grid row."""
    return {name: float(row[col]) for col, name in _CV_COLUMNS.items() if col in row.index}


def _time_candidates(ranked: list[_Ranked], features: pd.DataFrame, budget_ms: float | None) -> list[Candidate]:
    """Each ranked model's serving cost, timed inside its PyCaret preprocessing pipeline as it would serve."""
    from pycaret.internal.pipeline import estimator_pipeline

    timed = []
    for entry in ranked:
        with estimator_pipeline(entry.exp.pipeline, entry.model) as pipeline:
            cost = measure_serving_cost(pipeline, features)
        timed.append(
            Candidate(
                model_id=entry.model_id,
                model_name=str(entry.row.get("Model", entry.model_id)),
                cv_f1=entry.cv_f1,
                cv_accuracy=float(entry.row["Accuracy"]),
                serving_cost=cost,
                within_budget=budget_ms is None or cost.single_row_ms <= budget_ms,
                trained_rows=len(entry.data),
                seconds_per_fold=float(entry.row.get("TT (Sec)", 0.0)),
            )
        )
    return timed


def _choose(timed: list[Candidate]) -> Candidate:
    """The best-ranked candidate within the budget, or the cheapest when none fits."""
    fitting = [c for c in timed if c.within_budget]
    if fitting:
        return fitting[0]
    return min(timed, key=lambda c: c.serving_cost.single_row_ms)


def _tune(
    winner: _Ranked, policy: TuningPolicy, folds: int, features: pd.DataFrame, budget_ms: float | None
) -> tuple[TuningOutcome, Any, pd.DataFrame | None, ServingCost | None]:
    """Tune the winner within the budget; the outcome says whether the tuned model beat it on the same folds.

    Returns:
        (outcome, tuned model or None, its CV grid or None, its serving cost or None).
    """
    from pycaret.internal.pipeline import estimator_pipeline

    untuned = winner.cv_f1
    seconds_per_fold = float(winner.row.get("TT (Sec)", 0.0))
    iterations = tuning_iterations(policy, seconds_per_fold=seconds_per_fold, folds=folds)
    if iterations == 0:
        why = (
            f"not tuned: one draw costs about {seconds_per_fold * folds * 2:.1f} s (a draw and the final CV), over "
            f"the budget of {policy.seconds:g} s"
            if policy.iterations > 0 and policy.seconds > 0
            else "tuning is off"
        )
        return TuningOutcome(winner.model_id, 0, untuned, reason=why), None, None, None
    started = time.perf_counter()
    # choose_better=False: the comparison with the untuned model is ours (keep_tuned), on the grids of both.
    tuned = winner.exp.tune_model(
        winner.model, n_iter=iterations, optimize="F1", choose_better=False, verbose=False, tuner_verbose=False
    )
    grid = winner.exp.pull()
    seconds = time.perf_counter() - started
    tuned_f1 = float(grid.loc["Mean", "F1"])
    with estimator_pipeline(winner.exp.pipeline, tuned) as pipeline:
        cost = measure_serving_cost(pipeline, features)
    kept, why = keep_tuned(untuned, tuned_f1, tuned_ms=cost.single_row_ms, budget_ms=budget_ms)
    before, after = winner.model.get_params(), tuned.get_params()
    changed = {k: str(v) for k, v in after.items() if k in before and str(before[k]) != str(v)}
    outcome = TuningOutcome(
        model_id=winner.model_id,
        iterations=iterations,
        untuned_cv_f1=untuned,
        tuned_cv_f1=tuned_f1,
        kept=kept,
        reason=why,
        seconds=seconds,
        params=changed,
        tuned_single_row_ms=cost.single_row_ms,
    )
    return outcome, tuned, grid, cost


def _compare(
    exp: Any,
    data: pd.DataFrame,
    target: str,
    models: tuple[str, ...],
    setup: dict[str, Any],
    timings: dict[str, float],
    suffix: str,
    n_select: int,
    leaderboard: list[dict[str, Any]],
) -> list[_Ranked]:
    """PyCaret's setup and compare_models on `data`: the best `n_select` of `models`, best first.

    Every row of the grid (every model scored, not only the selected) is appended to `leaderboard`.
    """
    balance: ImbalanceCheck = setup["balance"]
    started = time.perf_counter()
    exp.setup(
        data,
        target=target,
        session_id=setup["session_id"],
        fold=setup["fold"],
        n_jobs=setup["n_jobs"],
        fix_imbalance=balance.fixed,
        **({"fix_imbalance_method": balance.method} if balance.fixed else {}),
        verbose=False,
        html=False,
        log_experiment=False,  # broken with MLflow 3 (pycaret#4100): registry.py logs instead
        system_log=False,
    )
    timings[f"setup{suffix}"] = time.perf_counter() - started

    started = time.perf_counter()
    n_select = max(1, min(n_select, len(models)))
    ranked = exp.compare_models(include=list(models), n_select=n_select, sort="F1", verbose=False)
    grid = exp.pull()
    timings[f"compare_models{suffix}"] = time.perf_counter() - started
    for model_id, row in grid.iterrows():
        values = {str(k): (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        leaderboard.append({"model_id": str(model_id), **values, "trained_rows": len(data)})
    if not isinstance(ranked, list):  # n_select=1 returns the model itself; every model failing returns []
        ranked = [ranked]
    # The grid's index is PyCaret's id of each model's class, in the same order as the models returned.
    return [_Ranked(exp=exp, model=model, row=grid.loc[exp._get_model_id(model)], data=data) for model in ranked]


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
