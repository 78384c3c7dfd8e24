"""Throwaway databases on the real PostgreSQL server (127.0.0.1:5432 unless `DRIFTLOOP_TEST_POSTGRES_URL` says
otherwise): each is created with a unique name and dropped after, so no run depends on what another left behind."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

ADMIN_URL = os.environ.get("DRIFTLOOP_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
"""A libpq URL of a role that may create databases, on the server the tests use."""


def _admin():  # noqa: ANN202 - psycopg is imported lazily: SQLite-only runs do not need it
    import psycopg

    return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)


def server_available() -> bool:
    """Whether the PostgreSQL server answers."""
    try:
        with _admin() as conn:
            conn.execute("SELECT 1")
    except Exception:  # noqa: BLE001 - any failure means "no server here"
        return False
    return True


def require_server() -> None:
    """Skip the calling test when no PostgreSQL server answers."""
    if not server_available():
        pytest.skip(f"no PostgreSQL server at {make_url(ADMIN_URL).render_as_string(hide_password=True)}")


@contextlib.contextmanager
def temporary_database(prefix: str = "driftloop_test") -> Iterator[str]:
    """Create a database with a unique name; yield its libpq URL (`postgresql://...`); drop it after.

    Args:
        prefix: Start of the database name (the rest is random).

    Yields:
        The URL of the new database (add the driver for SQLAlchemy: `with_driver(url, "psycopg")`).
    """
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with _admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def with_driver(url: str, driver: str) -> str:
    """The same database URL with a SQLAlchemy driver: `psycopg` (router, MLflow) or `asyncpg` (Prefect)."""
    return make_url(url).set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)
