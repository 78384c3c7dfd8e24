"""The whole loop on the Postgres profile: the same demo command with `deployments/profiles/postgres.env`, on fresh
databases of the real PostgreSQL server, two routers behind nginx; the new champion must be served by both."""

import json

import pytest
import sqlalchemy as sa
from mlflow import MlflowClient

from tests.e2e import launch

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def demo():
    """The profile's settings with this run's own databases, ports and home, started in the background when the
    session collected this module (see `tests/e2e/launch.py`); the databases are dropped when the session ends."""
    running = launch.demo_for(launch.POSTGRES)
    if running.skipped:
        pytest.skip(running.skipped)
    databases = running.details["databases"]
    assert set(databases) <= set(running.details["profile"])  # the profile names every database this run replaces
    result = running.result()
    print(result.stdout[-20000:], result.stderr[-5000:])
    summary_path = running.home / "demo-summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return result, summary, databases


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
    # The promoted challenger's alias is gone (a later loop, on a slow machine, can only have a newer challenger).
    later = client.get_registered_model("IrisClassifier").aliases.get("challenger")
    assert later is None or int(later) > int(promoted)

    # One store behind both replicas: every request the simulator got answered is there.
    engine = sa.create_engine(databases["DRIFTLOOP_ROUTER_STORE_URL"])
    try:
        with engine.connect() as conn:
            logged = conn.execute(sa.text("SELECT count(*) FROM inferences")).scalar_one()
    finally:
        engine.dispose()
    assert logged >= summary["traffic"]["ok"]
