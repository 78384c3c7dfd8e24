"""Run the router: `python -m serving` (uvicorn, settings from the environment and `.env`)."""

from __future__ import annotations

import os

import uvicorn

from serving.settings import get_settings


def main() -> None:
    """Serve `serving.app:create_app` on `router_host:router_port` until interrupted."""
    settings = get_settings()
    # MLflow's HTTP client retries for minutes by default; a router would rather keep serving its
    # current models and retry on the next refresh. Explicit environment values still win.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    # A tqdm bar per downloaded version only clutters the router log.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uvicorn.run(
        "serving.app:create_app",
        factory=True,
        host=settings.router_host,
        port=settings.router_port,
        log_level="info",
    )


if __name__ == "__main__":
    main()
