"""The router with stub models as a process of its own: `python -m tests.serving.live_router` (from the repo root).

Settings come from the environment like `python -m serving`; the registry is a `StubSource` with champion v1 and
challenger v2 (tests that need a real MLflow registry use `serving.services.models.ModelSource`).
"""

from __future__ import annotations

import uvicorn

from serving.app import create_app
from serving.security import check_bind
from serving.settings import RouterSettings
from tests.serving.stubs import StubSource


def main() -> None:
    """Serve until SIGTERM (or SIGKILL)."""
    settings = RouterSettings(_env_file=None)
    check_bind(settings.router_host, settings)
    app = create_app(settings, model_source=StubSource(settings.model_name, champion="1", challenger="2"))
    uvicorn.run(
        app,
        host=settings.router_host,
        port=settings.router_port,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=30,  # a loaded CI machine can leave a keep-alive connection idle for seconds
    )


if __name__ == "__main__":
    main()
