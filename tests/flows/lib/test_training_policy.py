"""How to train at a given size: the scale plan, the tuning budget, the keep rule and the imbalance check."""

from __future__ import annotations

import pytest

from flows.lib.training_policy import (
    ImbalancePolicy,
    ScalePlan,
    ScalePolicy,
    TuningPolicy,
    check_imbalance,
    keep_tuned,
    plan_scale,
    tuning_iterations,
)

MODELS = ["lr", "dt", "rf", "et", "knn", "nb"]
SCALE = ScalePolicy(rows=50_000, folds=2, sample_rows=50_000, sampled=("rf", "et", "knn"), dropped=("gpc",))


def test_below_the_scale_size_every_model_trains_on_every_row():
    assert plan_scale(49_999, MODELS, 3, SCALE) == ScalePlan(rows=49_999, folds=3, full=tuple(MODELS))
    assert plan_scale(10**6, MODELS, 3, None) == ScalePlan(rows=10**6, folds=3, full=tuple(MODELS))


def test_at_scale_costly_models_train_on_a_sample_others_are_dropped_and_folds_drop():
    plan = plan_scale(1_000_000, [*MODELS, "gpc"], 3, SCALE)

    assert plan == ScalePlan(
        rows=1_000_000,
        folds=2,
        full=("lr", "dt", "nb"),
        sampled=("rf", "et", "knn"),
        sample_rows=50_000,
        dropped=("gpc",),
        at_scale=True,
    )


def test_at_the_threshold_a_sample_as_large_as_the_data_is_no_sample():
    plan = plan_scale(50_000, MODELS, 3, SCALE)
    assert (plan.at_scale, plan.folds, plan.full, plan.sampled, plan.sample_rows) == (True, 2, tuple(MODELS), (), 0)


def test_dropping_every_model_is_refused():
    with pytest.raises(ValueError, match="every model"):
        plan_scale(10**6, ["gpc"], 3, SCALE)


@pytest.mark.parametrize(
    "iterations,seconds,per_fold,folds,expected",
    [
        (10, 120.0, 1.0, 3, 10),  # 40 rounds fit: capped at 10 draws
        (10, 120.0, 10.0, 3, 3),  # 4 rounds of 30 s fit: 3 draws and the final CV
        (10, 120.0, 30.0, 3, 0),  # not even a draw and the final CV
        (0, 120.0, 1.0, 3, 0),  # tuning off
        (10, 0.0, 1.0, 3, 0),
    ],
)
def test_tuning_draws_fit_the_time_and_iteration_budget(iterations, seconds, per_fold, folds, expected):
    policy = TuningPolicy(iterations=iterations, seconds=seconds)
    assert tuning_iterations(policy, seconds_per_fold=per_fold, folds=folds) == expected


def test_the_tuned_model_is_kept_only_when_it_beats_the_untuned_on_cv_and_fits_the_budget():
    assert keep_tuned(0.90, 0.92) == (True, "tuned CV F1 0.9200 beats the untuned 0.9000")
    assert keep_tuned(0.90, 0.90)[0] is False  # a tie keeps the untuned model
    assert keep_tuned(0.90, 0.88) == (False, "tuned CV F1 0.8800 does not beat the untuned 0.9000")
    kept, why = keep_tuned(0.90, 0.95, tuned_ms=40.0, budget_ms=29.0)
    assert not kept and "over the latency budget 29.0 ms" in why
    assert keep_tuned(0.90, 0.95, tuned_ms=20.0, budget_ms=29.0)[0] is True


def test_imbalance_is_detected_from_the_class_counts_and_handled_as_configured():
    counts = {"a": 300, "b": 100, "c": 50}
    auto = ImbalancePolicy(mode="auto", ratio=3.0, method="smote")

    check = check_imbalance(counts, auto)
    assert (check.ratio, check.fixed, check.method) == (6.0, True, "smote")
    assert check.reason == "largest/smallest class 6.0 >= 3"
    assert check_imbalance({"a": 100, "b": 50}, auto).fixed is False
    assert check_imbalance(counts, ImbalancePolicy(mode="never", ratio=3.0, method="smote")).fixed is False
    assert check_imbalance({"a": 1, "b": 1}, ImbalancePolicy(mode="always", ratio=3.0, method="smote")).fixed is True
    assert check_imbalance(counts, None).fixed is False
