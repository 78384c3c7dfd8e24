from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from flows.lib.training import TrainResult, evaluate
from flows.lib.training_policy import ImbalancePolicy, ScalePolicy, TuningPolicy


def test_train_picks_a_model_that_predicts_on_raw_features(trained: TrainResult, iris: pd.DataFrame) -> None:
    features = iris.drop(columns=["species"])

    predictions = trained.pipeline.predict(features)

    assert len(predictions) == len(iris)
    assert set(predictions) <= {"setosa", "versicolor", "virginica"}
    assert trained.model_id in {"lr", "dt"}
    assert trained.holdout_metrics["accuracy"] > 0.8
    assert set(trained.holdout_metrics) == {"accuracy", "f1_macro", "precision_macro", "recall_macro"}
    assert "auc" not in trained.cv_metrics and trained.cv_metrics["f1"] > 0.8


def test_holdout_is_the_untouched_input_rows(trained: TrainResult, iris: pd.DataFrame) -> None:
    holdout = trained.holdout

    assert 0 < len(holdout) < len(iris)
    pd.testing.assert_frame_equal(holdout, iris.loc[holdout.index])


def test_train_leaves_no_pycaret_log_behind(trained: TrainResult, train_dir: Path) -> None:
    assert not (train_dir / "logs.log").exists()
    assert not (Path(__file__).parents[3] / "logs.log").exists()


def test_evaluate_matches_sklearn_on_the_same_predictions(trained: TrainResult, iris: pd.DataFrame) -> None:
    sample = iris.sample(60, random_state=0)
    y_pred = trained.pipeline.predict(sample.drop(columns=["species"]))

    scores = evaluate(trained.pipeline, sample, "species")

    assert scores["accuracy"] == skm.accuracy_score(sample["species"], y_pred)
    assert scores["f1_macro"] == skm.f1_score(sample["species"], y_pred, average="macro")


class ConstantModel:
    """Predicts one integer class for every row."""

    def __init__(self, label: int) -> None:
        self.label = label

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        return np.full(len(features), self.label)


def test_evaluate_casts_string_labels_to_the_predictions_dtype() -> None:
    data = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0], "y": pd.Series(["1", "1", "0", "1"], dtype=object)})

    scores = evaluate(ConstantModel(1), data, "y")

    assert scores["accuracy"] == 0.75
    assert scores["f1_macro"] == pytest.approx(skm.f1_score([1, 1, 0, 1], [1, 1, 1, 1], average="macro"))


def test_evaluate_refuses_missing_target() -> None:
    with pytest.raises(ValueError, match="not in"):
        evaluate(ConstantModel(1), pd.DataFrame({"x": [1.0]}), "y")


def noisy_classes(rows: int = 300) -> pd.DataFrame:
    """Three classes with a quarter of the labels flipped: a fully grown decision tree overfits them."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=rows, n_features=6, n_informative=3, n_redundant=0, n_classes=3, flip_y=0.25, random_state=3
    )
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(6)])
    frame["label"] = [f"c{v}" for v in y]
    return frame


def estimator_params(pipeline) -> dict[str, str]:
    return {k: str(v) for k, v in pipeline.steps[-1][1].get_params().items()}


@pytest.fixture(scope="module")
def tuned(train_dir: Path) -> TrainResult:
    from flows.lib.training import train

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(train_dir)
        return train(
            noisy_classes(),
            "label",
            models=["dt"],
            folds=3,
            candidates=1,
            tuning=TuningPolicy(iterations=6, seconds=60),
        )


def test_tuning_keeps_the_tuned_model_when_it_beats_the_untuned_one_on_cv(tuned: TrainResult) -> None:
    outcome = tuned.tuning

    assert outcome is not None and outcome.iterations == 6 and outcome.tuned_cv_f1 is not None
    assert outcome.untuned_cv_f1 == tuned.candidates[0].cv_f1
    # On noisy labels a fully grown tree overfits: a tuned depth or leaf size does better on the same folds.
    assert outcome.kept and outcome.tuned_cv_f1 > outcome.untuned_cv_f1
    assert tuned.cv_metrics["f1"] == outcome.tuned_cv_f1
    registered = estimator_params(tuned.pipeline)
    assert outcome.params and all(registered[k] == v for k, v in outcome.params.items())
    assert tuned.chosen_cost == tuned.tuned_cost and tuned.tuned_cost.single_row_ms == outcome.tuned_single_row_ms


@pytest.fixture(scope="module")
def separable_at_scale(iris: pd.DataFrame, train_dir: Path) -> TrainResult:
    """Setosa against few versicolor: perfectly separable (CV F1 1.0, nothing to gain by tuning) and imbalanced."""
    from flows.lib.training import train

    data = pd.concat([iris[iris.species == "setosa"], iris[iris.species == "versicolor"].head(12)])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(train_dir)
        return train(
            data,
            "species",
            models=["lr", "dt", "rf", "knn"],
            folds=3,
            candidates=3,
            scale=ScalePolicy(rows=50, folds=2, sample_rows=45, sampled=("rf",), dropped=("knn",)),
            tuning=TuningPolicy(iterations=2, seconds=60),
            imbalance=ImbalancePolicy(mode="auto", ratio=3.0, method="randomoversampler"),
        )


def test_tuning_keeps_the_untuned_model_when_the_tuned_one_does_not_beat_it(separable_at_scale: TrainResult) -> None:
    outcome = separable_at_scale.tuning

    assert outcome is not None and outcome.iterations == 2 and outcome.tuned_cv_f1 is not None
    assert outcome.untuned_cv_f1 == 1.0 and not outcome.kept
    assert outcome.reason.endswith("does not beat the untuned 1.0000")
    registered = estimator_params(separable_at_scale.pipeline)
    assert not outcome.params or any(registered[k] != v for k, v in outcome.params.items())
    chosen = next(c for c in separable_at_scale.candidates if c.model_id == separable_at_scale.model_id)
    assert separable_at_scale.chosen_cost == chosen.serving_cost


def test_at_scale_costly_models_train_on_a_seeded_sample_and_dropped_ones_not_at_all(
    separable_at_scale: TrainResult,
) -> None:
    plan = separable_at_scale.scale
    rows = {c.model_id: c.trained_rows for c in separable_at_scale.candidates}

    assert plan is not None and (plan.at_scale, plan.folds, plan.sampled, plan.dropped) == (True, 2, ("rf",), ("knn",))
    assert rows == {"lr": 62, "dt": 62, "rf": 45}  # 36 setosa + 9 versicolor: the sample keeps the class shares
    assert set(separable_at_scale.timings) >= {"setup", "compare_models", "setup_sample", "compare_models_sample"}


def test_imbalanced_classes_are_detected_and_rebalanced_in_training(separable_at_scale: TrainResult) -> None:
    balance = separable_at_scale.imbalance

    assert balance is not None and balance.fixed and balance.counts == {"setosa": 50, "versicolor": 12}
    assert balance.ratio == pytest.approx(50 / 12) and balance.method == "randomoversampler"
    assert "balance" in dict(separable_at_scale.pipeline.steps)


def test_stratified_sample_keeps_class_shares_and_is_seeded(iris: pd.DataFrame) -> None:
    from flows.lib.training import stratified_sample

    sample = stratified_sample(iris, "species", 30, seed=1)

    assert sample["species"].value_counts().to_dict() == {"setosa": 10, "versicolor": 10, "virginica": 10}
    assert stratified_sample(iris, "species", 30, seed=1).equals(sample)
    assert stratified_sample(iris, "species", 1000, seed=1) is iris
