"""`python -m serving`: environment prepared before uvicorn imports the app."""

import os
import sys

import pytest

import serving.__main__ as entry
from serving.settings import RouterSettings


@pytest.fixture(autouse=True)
def switch_intervals(monkeypatch):
    """What `main` sets as the interpreter's switch interval; this test process keeps its own."""
    seen: list[float] = []
    monkeypatch.setattr(sys, "setswitchinterval", seen.append)
    return seen


def test_main_sends_pycaret_logs_under_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PYCARET_CUSTOM_LOGGING_PATH", "unset below; restored after the test")
    monkeypatch.delenv("PYCARET_CUSTOM_LOGGING_PATH")
    monkeypatch.setattr(entry, "get_settings", lambda: RouterSettings(_env_file=None, home=tmp_path / "home"))
    seen = {}

    def run(app, **kwargs):
        seen["env"] = os.environ.get("PYCARET_CUSTOM_LOGGING_PATH")

    monkeypatch.setattr(entry.uvicorn, "run", run)
    entry.main()
    log = tmp_path / "home" / "logs" / "pycaret.log"
    assert seen["env"] == str(log)
    assert log.parent.is_dir()


def test_main_keeps_an_explicit_pycaret_log_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PYCARET_CUSTOM_LOGGING_PATH", os.devnull)
    monkeypatch.setattr(entry, "get_settings", lambda: RouterSettings(_env_file=None, home=tmp_path / "home"))
    monkeypatch.setattr(entry.uvicorn, "run", lambda app, **kwargs: None)
    entry.main()
    assert os.environ["PYCARET_CUSTOM_LOGGING_PATH"] == os.devnull
    assert not (tmp_path / "home" / "logs").exists()


def test_main_sets_the_switch_interval_from_the_settings(tmp_path, monkeypatch, switch_intervals):
    monkeypatch.setattr(entry.uvicorn, "run", lambda app, **kwargs: None)
    monkeypatch.setattr(entry, "get_settings", lambda: RouterSettings(_env_file=None, home=tmp_path / "home"))
    entry.main()
    monkeypatch.setenv("DRIFTLOOP_GIL_SWITCH_INTERVAL_MS", "2.5")  # read by the next settings `main` gets
    entry.main()
    assert switch_intervals == [0.001, 0.0025]


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_a_switch_interval_that_is_not_a_positive_number_is_refused(monkeypatch, value):
    from pydantic import ValidationError

    monkeypatch.setenv("DRIFTLOOP_GIL_SWITCH_INTERVAL_MS", value)
    with pytest.raises(ValidationError, match="gil_switch_interval_ms"):
        RouterSettings(_env_file=None)
