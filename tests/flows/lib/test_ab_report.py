"""A/B reports: JSON record with a stable latest copy, Wilson bands, and the plot."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from scipy.stats import binomtest

from flows.lib.ab_report import plot_history, wilson, write_report


def test_report_and_latest_hold_the_same_record(tmp_path):
    first, latest = write_report({"decision": "CONTINUE"}, tmp_path, "t1")
    second, latest = write_report({"decision": "PROMOTE"}, tmp_path, "t2")
    assert json.loads(first.read_text()) == {"decision": "CONTINUE"}
    assert json.loads(latest.read_text()) == json.loads(second.read_text()) == {"decision": "PROMOTE"}


def test_wilson_is_scipys_interval_and_covers_everything_without_data():
    expected = binomtest(30, 40).proportion_ci(method="wilson")
    assert wilson(30, 40) == pytest.approx((expected.low, expected.high))
    assert wilson(0, 0) == (0.0, 1.0)


def test_plot_is_a_png(tmp_path):
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    points = [
        {"at": t0 + timedelta(minutes=i), "champion_accuracy": 0.5, "champion_low": 0.4, "champion_high": 0.6,
         "challenger_accuracy": 0.8, "challenger_low": 0.7, "challenger_high": 0.9,
         "d_hat": 0.3, "cs_lower": 0.3 - 1 / (i + 1), "cs_upper": 0.3 + 1 / (i + 1)}
        for i in range(3)
    ]  # fmt: skip
    path = plot_history(points, tmp_path / "plot.png", title="v1 vs v2")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
