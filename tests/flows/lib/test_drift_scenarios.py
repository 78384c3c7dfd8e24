"""Drift scenarios on the check and the policy (no Prefect): each change is detected and attributed, no drift stays
quiet, the calibration meets its budget on resampled no-drift data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from contracts import events
from flows.lib import drift_policy
from flows.lib.drift_calibration import (
    calibrate_version,
    check_alarm_rate,
    no_episode_probability,
    window_sizes,
)
from flows.lib.drift_check import CheckConfig, run_check

ROWS = 300


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 3))
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 0] * 0.5 + x[:, 1], "c": np.round(x[:, 2], 1)})
    frame["kind"] = rng.choice(["red", "green", "blue"], size=5000, p=[0.5, 0.3, 0.2])
    frame["y"] = np.where(frame["a"] > 0, "pos", "neg")
    return frame


@pytest.fixture(scope="module")
def calibrated(reference: pd.DataFrame):
    return calibrate_version(
        reference,
        target="y",
        predictions=reference["y"],
        holdout_accuracy=0.95,
        min_rows=ROWS,
        window_rows=ROWS,
        budget=0.05,
        period_checks=720,
        consecutive=2,
        resamples=2000,
        seed=1,
    )


def window(reference: pd.DataFrame, seed: int) -> pd.DataFrame:
    """A fresh no-drift window: the same generating process as the reference."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(ROWS, 3))
    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 0] * 0.5 + x[:, 1], "c": np.round(x[:, 2], 1)})
    frame["kind"] = rng.choice(["red", "green", "blue"], size=ROWS, p=[0.5, 0.3, 0.2])
    return frame


def episode(reference, calibrated, windows, **check) -> tuple[drift_policy.Verdict, list[set[str]]]:
    """Run consecutive checks through the policy; the verdict after the last, and each check's alarms."""
    state, alarms = drift_policy.EpisodeState(), []
    for frame in windows:
        result = run_check(reference, frame, calibrated, **check)
        alarms.append(result.alarms())
        state = drift_policy.update(state, result.alarms(), "1")
    found = drift_policy.persistent(state, 2)
    return drift_policy.verdict(found, ["a", "b", "c", "kind"], drift_policy.SeverityRules()), alarms


def test_the_budget_sets_the_per_check_alarm_rate() -> None:
    p = check_alarm_rate(0.05, 720, 2)
    assert 1 - no_episode_probability(p, 720, 2) == pytest.approx(0.05, abs=1e-6)
    assert check_alarm_rate(0.05, 720, 1) < p < check_alarm_rate(0.05, 720, 3)
    assert window_sizes(50, 300) == [50, 100, 200, 300]


def test_calibration_is_stored_whole_and_meets_its_rate(calibrated) -> None:
    cal = calibrated.for_rows(ROWS)
    assert {c.method for c in cal.columns} == {"driftloop_ks_d", "driftloop_tvd"}
    assert all(c.threshold > c.null_median for c in cal.columns)
    assert cal.resampled_alarm_rate <= cal.check_alarm_rate + 2 / cal.resamples
    assert type(calibrated).from_dict(calibrated.as_dict()) == calibrated


def test_no_drift_gives_no_episode(reference, calibrated) -> None:
    verdict, _ = episode(reference, calibrated, [window(reference, s) for s in (10, 11, 12)])
    assert (verdict.severity, verdict.drifted_columns) == (events.SEVERITY_NONE, [])


@pytest.mark.parametrize(
    ("change", "column"),
    [
        (lambda f: f.assign(a=f.a + 0.5), "a"),  # mean shift of 0.5 SD
        (lambda f: f.assign(c=f.c * 1.6), "c"),  # variance change
        (lambda f: f.assign(kind=np.where(np.arange(len(f)) % 4 == 0, "purple", f.kind)), "kind"),  # new category
        (lambda f: f.assign(b=np.where(np.arange(len(f)) % 3 == 0, np.nan, f.b)), "b"),  # rising missing values
    ],
    ids=["mean-shift", "variance", "new-category", "missing-values"],
)
def test_a_change_is_detected_after_two_checks_and_attributed(reference, calibrated, change, column) -> None:
    verdict, alarms = episode(reference, calibrated, [change(window(reference, s)) for s in (20, 21)])

    assert verdict.drifted_columns == [column]
    assert verdict.severity == events.SEVERITY_WARNING
    assert drift_policy.starts_retrain(verdict.severity, "warning")
    assert not drift_policy.starts_retrain(verdict.severity, "critical")


def test_one_alarm_alone_is_no_episode(reference, calibrated) -> None:
    verdict, alarms = episode(
        reference, calibrated, [window(reference, 30).assign(a=lambda f: f.a + 1), window(reference, 31)]
    )
    assert "a" in alarms[0] and verdict.severity == events.SEVERITY_NONE


def test_a_missing_column_makes_the_window_invalid(reference, calibrated) -> None:
    result = run_check(reference, window(reference, 40).drop(columns=["b"]), calibrated)
    assert not result.valid and result.quality.absent_columns == ["b"] and result.drift is None


def test_an_all_nan_column_does_not_crash_and_is_attributed(reference, calibrated) -> None:
    result = run_check(reference, window(reference, 41).assign(a=np.nan), calibrated)
    assert result.valid and "a" not in result.tested_columns
    assert result.alarms() == {f"{drift_policy.QUALITY_PREFIX}a"}


def test_a_performance_drop_alone_is_critical_with_its_own_reason(reference, calibrated) -> None:
    frames = [window(reference, s) for s in (50, 51)]
    checks = []
    for frame in frames:
        labels = pd.Series(np.where(frame["a"] > 0, "pos", "neg"))
        wrong = labels.where(np.arange(len(labels)) % 3 != 0, "other")  # a third served wrong: accuracy 0.67
        checks.append({"current_labels": labels, "labelled_predictions": wrong, "current_predictions": labels})
    state = drift_policy.EpisodeState()
    for frame, check in zip(frames, checks, strict=True):
        result = run_check(reference, frame, calibrated, config=CheckConfig(), **check)
        state = drift_policy.update(state, result.alarms(), "1")
    verdict = drift_policy.verdict(
        drift_policy.persistent(state, 2), ["a", "b", "c", "kind"], drift_policy.SeverityRules()
    )

    assert (verdict.severity, verdict.reason, verdict.drifted_columns) == ("critical", "performance_drop", [])
    assert result.accuracy is not None and result.accuracy.high < 0.9


def test_severity_rules() -> None:
    rules = drift_policy.SeverityRules(critical_share=0.5, important_columns=["kind"])
    columns = ["a", "b", "c", "kind"]
    assert drift_policy.verdict({"a"}, columns, rules).severity == "warning"
    assert drift_policy.verdict({"a", "b"}, columns, rules).severity == "critical"
    assert drift_policy.verdict({"kind"}, columns, rules).severity == "critical"
    assert drift_policy.verdict(set(), columns, rules).severity == "none"


def test_streaks_restart_with_a_new_champion() -> None:
    state = drift_policy.update(drift_policy.EpisodeState(), {"a"}, "1")
    assert drift_policy.persistent(drift_policy.update(state, {"a"}, "2"), 2) == set()
    assert drift_policy.persistent(drift_policy.update(state, {"a"}, "1"), 2) == {"a"}
    assert drift_policy.EpisodeState.from_json("not json") == drift_policy.EpisodeState()


def test_evidentlys_verdicts_are_the_calibrated_statistic_against_its_threshold(reference, calibrated) -> None:
    from flows.lib.drift_stats import ks_distance, tvd

    frame = window(reference, 60).assign(a=lambda f: f.a + 0.5)
    result = run_check(reference, frame, calibrated)
    thresholds = result.calibration.thresholds()
    for column in result.drift.columns:
        if column.method == "driftloop_ks_d":
            expected = ks_distance(reference[column.column].to_numpy(), frame[column.column].to_numpy())
        else:
            expected = tvd(reference[column.column], frame[column.column])
        assert column.score == pytest.approx(expected)
        assert column.threshold == pytest.approx(thresholds[column.column])
        assert column.drifted == (expected > thresholds[column.column])
    assert result.drift.drifted_columns == ["a"]


def test_a_drift_measured_against_another_champion_starts_no_retrain():
    assert drift_policy.stale_drift("", "2") is None  # a run started by hand or by an older automation
    assert drift_policy.stale_drift("2", "2") is None
    assert drift_policy.stale_drift("1", "2") == (
        "the drift was measured against v1, but v2 is champion now: the next drift check measures against its reference"
    )
