"""The paired comparison of two models on the same rows: metric values, the interval and its coverage."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from flows.lib.comparison import paired_difference

LABELS = np.array(["setosa", "versicolor", "virginica"])


def noisy(y: np.ndarray, accuracy: float, rng: np.random.Generator) -> np.ndarray:
    """Predictions right with probability `accuracy`, else a random class."""
    return np.where(rng.random(len(y)) < accuracy, y, rng.choice(LABELS, len(y)))


@pytest.mark.parametrize("metric", ["f1_macro", "accuracy"])
def test_the_difference_is_sklearns_metric_of_each_model_on_the_same_rows(metric):
    rng = np.random.default_rng(0)
    y = rng.choice(LABELS, 300)
    a, b = noisy(y, 0.9, rng), noisy(y, 0.7, rng)
    score = {"f1_macro": lambda p: skm.f1_score(y, p, average="macro"), "accuracy": lambda p: skm.accuracy_score(y, p)}

    result = paired_difference(y, a, b, metric=metric, resamples=500)

    assert result.candidate == pytest.approx(score[metric](a))
    assert result.champion == pytest.approx(score[metric](b))
    assert result.difference == pytest.approx(score[metric](a) - score[metric](b))
    assert result.low < result.difference < result.high
    assert (result.rows, result.disagreements, result.method) == (300, int(np.sum(a != b)), "BCa bootstrap")


def test_identical_predictions_differ_by_exactly_zero():
    y = np.array(["a", "b", "a", "c"])
    result = paired_difference(y, y, y)
    assert (result.difference, result.low, result.high, result.method) == (0.0, 0.0, 0.0, "identical predictions")


def test_labels_and_predictions_of_different_types_compare_as_text():
    y, a, b = [0, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 0]

    result = paired_difference(np.array(y), np.array([str(v) for v in a]), np.array(b))

    assert result.candidate == pytest.approx(skm.f1_score(y, a, average="macro"))
    assert result.champion == pytest.approx(skm.f1_score(y, b, average="macro"))


def test_the_interval_covers_the_true_difference_about_as_often_as_it_claims():
    """200 holdouts of 150 rows from one population; the 90% interval should cover the population's difference."""
    rng = np.random.default_rng(11)
    population = rng.choice(LABELS, 200_000)
    a, b = noisy(population, 0.85, rng), noisy(population, 0.80, rng)
    truth = skm.f1_score(population, a, average="macro") - skm.f1_score(population, b, average="macro")
    covered = 0
    for _ in range(200):
        rows = rng.integers(0, len(population), 150)
        result = paired_difference(population[rows], a[rows], b[rows], confidence=0.9, resamples=400, seed=1)
        covered += result.low <= truth <= result.high
    # Binomial(200, 0.9): 5th to 95th percentile is 173 to 187; BCa on 150 rows may run a little short of nominal.
    assert 165 <= covered <= 195, covered


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="same non-zero number"):
        paired_difference(["a", "b"], ["a"], ["a", "b"])
