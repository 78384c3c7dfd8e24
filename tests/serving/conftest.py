"""Router test fixtures: stub model source, settings on a temp SQLite store, captured events, app factory, `client`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from litestar import Litestar
from litestar.testing import AsyncTestClient

from contracts.api import ArmOutcome
from contracts.auth import TOKEN_ENV
from serving.app import create_app
from serving.services.store import InferenceRow, Store
from serving.settings import RouterSettings
from tests.serving.stubs import FEATURES, BrokenModel, EventRecorder, StubModel, StubSource

__all__ = ["FEATURES", "BrokenModel", "EventRecorder", "StubModel", "StubSource"]
ROOT = Path(__file__).resolve().parents[2]
TOKENS = {"admin": "admin-secret-token", "label": "label-secret-token", "read": "read-secret-token"}
IRIS_ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
"""Features of one setosa flower (the `iris_row` fixture gives a copy)."""
PLAN = {
    "champion_version": "1",
    "challenger_version": "2",
    "alpha": 0.05,
    "power": 0.8,
    "mde": 0.1,
    "baseline": 0.8,
    "min_samples_per_arm": 5,
    "fixed_horizon_samples_per_arm": 4,
    "ab_split_b": 0.4,
    "max_duration_hours": 24.0,
}
"""An experiment plan for versions 1 and 2, as a client sends it."""


@pytest.fixture
def iris_row() -> dict[str, float]:
    """Features of one setosa flower."""
    return dict(IRIS_ROW)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "router.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    """An open SQLite store at `db_path`."""
    store = Store(f"sqlite:///{db_path}")
    store.open()
    yield store
    store.close()


@pytest.fixture
def settings(tmp_path: Path, db_path: Path) -> RouterSettings:
    return RouterSettings(
        _env_file=None,
        home=tmp_path,
        router_store_url=f"sqlite:///{db_path}",
        model_name="Iris",
        ab_split_b=0.5,
        assignment_salt="test-salt",
        fresh_salt_per_experiment=False,  # tests pick users per arm with the settings' salt
        model_refresh_seconds=0,
        outbox_interval_seconds=0,
    )


@pytest.fixture
def source() -> StubSource:
    """A registry with champion v1 and challenger v2."""
    return StubSource(champion="1", challenger="2")


@pytest.fixture
def emitted() -> EventRecorder:
    """The events every app built by `make_app` emitted (shared by replicas)."""
    return EventRecorder()


@pytest.fixture
def make_app(settings: RouterSettings, source: StubSource, emitted: EventRecorder) -> Callable[..., Litestar]:
    """Build an app; each call opens its own `Store` on the same database file (like a replica or a restart)."""

    def make(*, source: StubSource = source, settings: RouterSettings = settings, **changes: object) -> Litestar:
        settings = settings.model_copy(update=changes) if changes else settings
        return create_app(settings, model_source=source, store=Store(settings.store_url()), event_emitter=emitted)

    return make


@pytest.fixture
async def client(make_app: Callable[..., Litestar]) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=make_app()) as client:
        yield client


@pytest.fixture
def make_source() -> type[StubSource]:
    """The stub registry class, for tests that need their own aliases."""
    return StubSource


def auth(kind: str) -> dict[str, str]:
    """The Authorization header of one of `TOKENS`."""
    return {"Authorization": f"Bearer {TOKENS[kind]}"}


@pytest.fixture
def secured(settings: RouterSettings) -> RouterSettings:
    """Settings with the admin, label and read tokens of `TOKENS`."""
    return settings.model_copy(
        update={
            "router_admin_token": TOKENS["admin"],
            "router_label_token": TOKENS["label"],
            "router_read_token": TOKENS["read"],
        }
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveRouter:
    """The router as a process of its own (`python -m tests.serving.live_router`), over real HTTP."""

    home: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store_url(self) -> str:
        return f"sqlite:///{self.home / 'router.db'}"

    def start(self, timeout: float = 60.0) -> LiveRouter:
        """Start the process and wait until it answers /health."""
        env = {**os.environ, **self.env, "DRIFTLOOP_ROUTER_PORT": str(self.port), "DRIFTLOOP_HOME": str(self.home)}
        log = (self.home / "router.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.serving.live_router"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, self.log_tail()
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, self.log_tail()
            time.sleep(0.1)

    def log_tail(self) -> str:
        return (self.home / "router.log").read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A SQLAlchemy URL (psycopg 3) of a PostgreSQL database created for this test and dropped after it."""
    from tests.postgres import require_server, temporary_database, with_driver

    require_server()
    with temporary_database() as url:
        yield with_driver(url, "psycopg")


@pytest.fixture
def live_router(tmp_path: Path) -> Iterator[Callable[..., LiveRouter]]:
    """Start routers as processes of their own (stub models, SQLite store under tmp_path, the `TOKENS`)."""
    started: list[LiveRouter] = []

    def start(**env: str) -> LiveRouter:
        home = tmp_path / "live"
        home.mkdir(exist_ok=True)
        tokens = {TOKEN_ENV[kind]: token for kind, token in TOKENS.items()}
        router = LiveRouter(home=home, env={**tokens, **env})
        started.append(router)
        return router.start()

    yield start
    for router in started:
        router.stop()


def outcomes_with_a_write_between_statements(store: Store) -> dict[str, ArmOutcome]:
    """`outcomes` of an experiment while another connection commits a labelled answer between its first and second
    statement: what the router hands the A/B evaluation when labels stream in while it reads."""

    def answer(request_id: str, user: str) -> InferenceRow:
        return InferenceRow(
            request_id=request_id, ts=datetime.now(UTC), user_id=user, arm="champion", model_name="Iris",
            model_version="1", experiment_id="v1-vs-v2", features={"x": 1.0}, prediction="setosa", label="setosa",
            latency_ms=1.0,
        )  # fmt: skip

    for i in range(4):
        store.log.record(answer(f"r{i}", f"u{i % 2}"))
    statements: list[str] = []

    def write_after_the_first(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)
            if len(statements) == 1:
                store.log.record(answer("late", "u9"))  # another pooled connection, committed now

    sa.event.listen(store.db.engine, "after_cursor_execute", write_after_the_first)
    try:
        result = store.log.outcomes("v1-vs-v2")
    finally:
        sa.event.remove(store.db.engine, "after_cursor_execute", write_after_the_first)
    assert len(statements) > 2  # the counts, then the users' sums and the rest, in separate statements
    assert store.log.outcomes("v1-vs-v2")["champion"].labelled == 5  # the write did commit
    return result
