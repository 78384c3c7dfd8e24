"""The router with stub models as a process of its own: `python -m tests.serving.live_router` (from the repo root).

Settings come from the environment like `python -m serving`; the registry is a `StubSource` with champion v1 and
challenger v2 (tests that need a real MLflow registry use `serving.services.models.ModelSource`).

Two optional variables let several of these processes share a world, as replicas do:
- `LIVE_ROUTER_REGISTRY_FILE`: a JSON file `{"aliases": {alias: version}, "plans": {version: plan}}` re-read at every
  alias refresh, so a test can move an alias under every replica at once;
- `LIVE_ROUTER_EVENTS_FILE`: the events the outbox sends are appended to this file, one JSON line each, instead of
  going to Prefect (the relay, its claims and leases run as in production).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import msgspec
import uvicorn

from contracts.api import ExperimentPlan
from serving.app import create_app
from serving.security import check_bind
from serving.settings import RouterSettings
from tests.serving.stubs import StubSource


class FileSource(StubSource):
    """A stub registry whose aliases and plans live in a JSON file shared by processes."""

    def __init__(self, model_name: str, path: Path) -> None:
        super().__init__(model_name)
        self.path = path

    def _read(self) -> dict[str, Any]:
        return json.loads(self.path.read_text())

    def resolve(self, alias: str) -> str | None:
        return self._read()["aliases"].get(alias)

    def plan(self, version: str) -> ExperimentPlan | None:
        plan = self._read().get("plans", {}).get(version)
        return None if plan is None else msgspec.convert(plan, ExperimentPlan)


def file_emitter(path: Path):
    """An outbox emitter that appends each event as one JSON line (O_APPEND: whole lines from every process)."""

    def emit(*, event: str, resource: dict, related: list, payload: dict, event_id: str) -> None:
        line = json.dumps({"event": event, "event_id": event_id, "pid": os.getpid(), "payload": payload}) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    return emit


def main() -> None:
    """Serve until SIGTERM (or SIGKILL)."""
    settings = RouterSettings(_env_file=None)
    check_bind(settings.router_host, settings)
    registry_file = os.environ.get("LIVE_ROUTER_REGISTRY_FILE")
    events_file = os.environ.get("LIVE_ROUTER_EVENTS_FILE")
    source = (
        FileSource(settings.model_name, Path(registry_file))
        if registry_file
        else StubSource(settings.model_name, champion="1", challenger="2")
    )
    app = create_app(
        settings, model_source=source, event_emitter=file_emitter(Path(events_file)) if events_file else None
    )
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
