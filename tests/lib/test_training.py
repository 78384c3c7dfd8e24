from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from flows.lib.training import TrainResult, evaluate


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
    assert not (Path(__file__).parents[2] / "logs.log").exists()


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
