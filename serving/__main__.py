"""Run the router: `python -m serving` (uvicorn, settings from the environment and `.env`)."""

from __future__ import annotations

import os
import sys

import uvicorn

from serving.security import check_bind
from serving.settings import get_settings


def main() -> None:
    """Serve `serving.app:create_app` on `router_host:router_port` until interrupted.

    Raises:
        SystemExit: The host is not loopback and no admin token is set.
    """
    settings = get_settings()
    check_bind(settings.router_host, settings)
    # Unpickling a PyCaret pipeline imports pycaret, which opens `logs.log` in the working directory unless
    # told otherwise; set this before uvicorn imports the app (and so anything that loads a model).
    if "PYCARET_CUSTOM_LOGGING_PATH" not in os.environ:
        log_dir = (settings.home / "logs").resolve()
        log_dir.mkdir(parents=True, exist_ok=True)
        os.environ["PYCARET_CUSTOM_LOGGING_PATH"] = str(log_dir / "pycaret.log")
    # MLflow's HTTP client retries for minutes by default; a router would rather keep serving its
    # current models and retry on the next refresh. Explicit environment values still win.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    # A tqdm bar per downloaded version only clutters the router log.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # The router's threads hand the interpreter lock around: with Python's 5 ms the event loop could wait that long
    # behind a batch of shadow scoring (see the README, "Performance").
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
    uvicorn.run(
        "serving.app:create_app",
        factory=True,
        host=settings.router_host,
        port=settings.router_port,
        log_level="info",
        # Every request is counted and timed in /metrics; a log line per request would cost throughput.
        access_log=False,
    )


if __name__ == "__main__":
    main()
