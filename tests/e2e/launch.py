"""The end-to-end demos, started in the background as soon as the session knows it runs them.

A demo waits on schedules most of its time, so the session starts each selected one when collection ends
(`tests/conftest.py`) and runs the rest of the suite meanwhile; the e2e tests run last and only wait for the result.
Each demo has its own home, free ports and (on the Postgres profile) its own databases, dropped at the end.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "deployments" / "profiles" / "postgres.env"
EMBEDDED = "embedded"
POSTGRES = "postgres"
MODULES = {"test_loop.py": EMBEDDED, "test_loop_postgres.py": POSTGRES}
"""Which demo each e2e module asserts on."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def router_port() -> int:
    """A port whose next two are free too (the Postgres profile's replicas listen there)."""
    for _ in range(50):
        port = free_port()
        if port < 65000 and all(_free(port + i) for i in (1, 2)):
            return port
    raise RuntimeError("no three free ports in a row")


@dataclass
class Demo:
    """One `python -m deployments.demo` run in the background, its output in files beside its home (the demo empties
    its home when it starts)."""

    kind: str
    base: Path
    """The demo's folder: `home/` (DRIFTLOOP_HOME) and its output, `demo.stdout` and `demo.stderr`."""
    timeout: float
    process: subprocess.Popen | None = None
    skipped: str | None = None
    """Why this demo cannot run here (its tests skip with this reason)."""
    details: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    _result: subprocess.CompletedProcess | None = None

    @property
    def home(self) -> Path:
        return self.base / "home"

    def result(self) -> subprocess.CompletedProcess:
        """Wait for the demo (within its timeout from its start) and return its exit code and output."""
        if self._result is None:
            assert self.process is not None
            left = self.timeout - (time.monotonic() - self.started)
            try:
                code = self.process.wait(timeout=max(left, 1))
            except subprocess.TimeoutExpired:
                self.process.kill()
                code = self.process.wait()
            out = (self.base / "demo.stdout").read_text(errors="replace")
            err = (self.base / "demo.stderr").read_text(errors="replace")
            self._result = subprocess.CompletedProcess(self.process.args, code, out, err)
        return self._result

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _spawn(demo: Demo, env: dict[str, str]) -> Demo:
    demo.home.mkdir(parents=True, exist_ok=True)
    with (demo.base / "demo.stdout").open("w") as out, (demo.base / "demo.stderr").open("w") as err:
        demo.process = subprocess.Popen(
            [sys.executable, "-m", "deployments.demo"], cwd=ROOT, env=env, stdout=out, stderr=err
        )
    demo.started = time.monotonic()
    return demo


def start_embedded(base: Path) -> Demo:
    """The README's demo on its embedded defaults, with 30 s schedules."""
    demo = Demo(EMBEDDED, base, timeout=2700)
    env = os.environ | {
        "DRIFTLOOP_HOME": str(demo.home),
        "DRIFTLOOP_PREFECT_PORT": str(free_port()),
        "DRIFTLOOP_MLFLOW_PORT": str(free_port()),
        "DRIFTLOOP_ROUTER_PORT": str(free_port()),
        "DRIFTLOOP_DEMO_SCHEDULE_SECONDS": "30",
        "DRIFTLOOP_DEMO_STALL_SECONDS": "600",  # other tests share the machine: a retrain can take minutes
        "DRIFTLOOP_DEMO_TIMEOUT_SECONDS": "2400",
    }
    return _spawn(demo, env)


def start_postgres(base: Path) -> Demo:
    """The same demo on the Postgres profile, on fresh databases of the real server (dropped by `drop_databases`)."""
    import sqlalchemy as sa
    from dotenv import dotenv_values

    from deployments import proxy
    from tests.postgres import ADMIN_URL, server_available

    demo = Demo(POSTGRES, base, timeout=2700)
    if not server_available():
        demo.skipped = f"no PostgreSQL server at {sa.make_url(ADMIN_URL).render_as_string(hide_password=True)}"
        return demo
    try:
        proxy.find_nginx("nginx")
    except proxy.ProxyNotFound as exc:
        demo.skipped = str(exc)
        return demo
    suffix = uuid.uuid4().hex[:8]
    server = sa.make_url(ADMIN_URL)
    urls = {
        "DRIFTLOOP_PREFECT_DATABASE_URL": ("asyncpg", f"driftloop_e2e_prefect_{suffix}"),
        "DRIFTLOOP_MLFLOW_BACKEND_STORE_URI": ("psycopg", f"driftloop_e2e_mlflow_{suffix}"),
        "DRIFTLOOP_ROUTER_STORE_URL": ("psycopg", f"driftloop_e2e_router_{suffix}"),
    }
    databases = {
        key: server.set(drivername=f"postgresql+{driver}", database=name).render_as_string(hide_password=False)
        for key, (driver, name) in urls.items()
    }
    profile = {k: v for k, v in dotenv_values(PROFILE).items() if v is not None}
    demo.details = {"databases": databases, "names": [name for _, name in urls.values()], "profile": profile}
    env = (
        os.environ
        | profile
        | databases
        | {
            "DRIFTLOOP_HOME": str(demo.home),
            "DRIFTLOOP_PREFECT_PORT": str(free_port()),
            "DRIFTLOOP_MLFLOW_PORT": str(free_port()),
            "DRIFTLOOP_ROUTER_PORT": str(router_port()),
            "DRIFTLOOP_DEMO_SCHEDULE_SECONDS": "30",
            "DRIFTLOOP_DEMO_STALL_SECONDS": "600",
            "DRIFTLOOP_DEMO_TIMEOUT_SECONDS": "2400",
        }
    )
    return _spawn(demo, env)


def drop_databases(demo: Demo) -> None:
    """Drop the Postgres demo's databases (after its process ended)."""
    import psycopg

    from tests.postgres import ADMIN_URL

    if demo.details.get("names"):
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            for name in demo.details["names"]:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


STARTERS = {EMBEDDED: start_embedded, POSTGRES: start_postgres}

RUNNING: dict[str, Demo] = {}
"""The session's demos by kind, started once."""


def demo_for(kind: str) -> Demo:
    """The session's demo of this kind, started now if the session did not start it at collection."""
    if kind not in RUNNING:
        import tempfile

        RUNNING[kind] = STARTERS[kind](Path(tempfile.mkdtemp(prefix=f"driftloop-e2e-{kind}-")))
    return RUNNING[kind]


def stop_all() -> None:
    """End every demo still running, drop the Postgres demo's databases and delete their homes."""
    import shutil

    for demo in RUNNING.values():
        demo.stop()
        if demo.kind == POSTGRES:
            drop_databases(demo)
        shutil.rmtree(demo.base, ignore_errors=True)
    RUNNING.clear()
