"""The whole loop on the Postgres profile: the same demo command with `deployments/profiles/postgres.env`, on fresh
databases of the real PostgreSQL server, two routers behind nginx; the new champion must be served by both."""

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from dotenv import dotenv_values
from mlflow import MlflowClient

from deployments import proxy
from tests.postgres import ADMIN_URL, require_server

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "deployments" / "profiles" / "postgres.env"
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def router_port() -> int:
    """A port whose next two are free too (the replicas listen there)."""
    for _ in range(50):
        port = free_port()
        if port < 65000 and all(_free(port + i) for i in (1, 2)):
            return port
    raise RuntimeError("no three free ports in a row")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The profile's settings with this run's own databases, ports and home; the databases are dropped after."""
    require_server()
    try:
        proxy.find_nginx("nginx")
    except proxy.ProxyNotFound as exc:
        pytest.skip(str(exc))
    home = tmp_path_factory.mktemp("driftloop-postgres")
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
    assert set(databases) <= set(profile)  # the profile names every database this run replaces
    env = (
        os.environ
        | profile
        | databases
        | {
            "DRIFTLOOP_HOME": str(home),
            "DRIFTLOOP_PREFECT_PORT": str(free_port()),
            "DRIFTLOOP_MLFLOW_PORT": str(free_port()),
            "DRIFTLOOP_ROUTER_PORT": str(router_port()),
            "DRIFTLOOP_DEMO_SCHEDULE_SECONDS": "30",
            "DRIFTLOOP_DEMO_STALL_SECONDS": "600",  # a retrain on a busy 2-core machine can take minutes
            "DRIFTLOOP_DEMO_TIMEOUT_SECONDS": "2400",
        }
    )
    try:
        result = subprocess.run(
            [sys.executable, "-m", "deployments.demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=2700
        )
        print(result.stdout[-20000:], result.stderr[-5000:])
        summary_path = home / "demo-summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
        yield result, summary, databases
    finally:
        import psycopg

        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            for _, name in urls.values():
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_loop_closes_on_postgres_and_both_replicas_serve_the_new_champion(demo):
    result, summary, databases = demo
    assert result.returncode == 0, result.stdout[-3000:]
    assert summary["closed"] is True and summary["first_missing_stage"] is None
    promoted = summary["promoted"]["challenger_version"]
    assert len(summary["replicas_serving"]) == 2
    assert set(summary["replicas_serving"].values()) == {promoted}

    # The registry lives in PostgreSQL and ends like on SQLite: the challenger is champion, no challenger left.
    client = MlflowClient(databases["DRIFTLOOP_MLFLOW_BACKEND_STORE_URI"])
    assert str(client.get_model_version_by_alias("IrisClassifier", "champion").version) == promoted
    assert "challenger" not in client.get_registered_model("IrisClassifier").aliases

    # One store behind both replicas: every request the simulator got answered is there.
    engine = sa.create_engine(databases["DRIFTLOOP_ROUTER_STORE_URL"])
    try:
        with engine.connect() as conn:
            logged = conn.execute(sa.text("SELECT count(*) FROM inferences")).scalar_one()
    finally:
        engine.dispose()
    assert logged >= summary["traffic"]["ok"]
