"""`python -m serving`: environment prepared before uvicorn imports the app."""

import os

import serving.__main__ as entry
from serving.settings import RouterSettings


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
