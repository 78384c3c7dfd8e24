"""A/B reports: JSON record with a stable latest copy, Wilson bands, and the plot."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from scipy.stats import binomtest

from flows.lib.ab_report import look_point, plot_history, wilson, write_report


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


def test_one_look_is_readable_minutes_on_the_axis_and_intervals_drawn(tmp_path, monkeypatch):
    """A first look is one point with its interval, on an axis of minutes (not a date axis spanning years)."""
    import matplotlib.axes

    drawn: list[dict] = []
    real = matplotlib.axes.Axes.errorbar

    def spy(self, x, y, *args, **kwargs):
        drawn.append({"x": list(x), "yerr": kwargs.get("yerr")})
        return real(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    point = {
        "at": at, "champion_accuracy": 0.5, "champion_low": 0.3, "champion_high": 0.7, "challenger_accuracy": 0.9,
        "challenger_low": 0.8, "challenger_high": 0.95, "d_hat": 0.4, "cs_lower": 0.1, "cs_upper": 0.7,
    }  # fmt: skip
    path = plot_history([point], tmp_path / "one.png", title="first look")
    assert path.read_bytes().startswith(b"\x89PNG")
    lift = drawn[-1]
    assert lift["x"] == [0.0] and lift["yerr"] == [[pytest.approx(0.3)], [pytest.approx(0.3)]]
    later = plot_history([point, point | {"at": at + timedelta(minutes=90)}], tmp_path / "two.png", title="two")
    assert later.exists() and drawn[-1]["x"] == [0.0, 90.0]  # minutes since the first look


def test_a_perfect_arm_whose_band_misses_its_point_still_plots(tmp_path):
    """Seen in a fresh-clone e2e run: the challenger at 1.0000 over 72 scored, its `correct` read as 71, and the look
    failed in matplotlib ("'yerr' must not contain negative values"). The band now comes from the point's own count,
    and a band that misses its point anyway is drawn flat on that side."""
    arm = {"scored": 72, "correct": 71, "scored_accuracy": 1.0}
    evidence = {"arms": {"champion": arm | {"scored_accuracy": 0.5, "correct": 36}, "challenger": arm}, "primary": None}
    point = look_point(datetime(2026, 1, 1, tzinfo=UTC), evidence)
    assert point["challenger_low"] <= point["challenger_accuracy"] == 1.0 <= point["challenger_high"]
    assert (point["challenger_low"], point["challenger_high"]) == pytest.approx(wilson(72, 72))

    off = point | {"challenger_high": 0.9975, "d_hat": 0.5, "cs_lower": 0.2, "cs_upper": 0.4999}
    path = plot_history([off], tmp_path / "off.png", title="a band that misses its point")
    assert path.read_bytes().startswith(b"\x89PNG")
