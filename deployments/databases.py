"""The server databases a stack profile names (Prefect, MLflow, router store): created when missing, reset on request.

Only PostgreSQL URLs are touched; SQLite files live under the stack's home and go with it.
"""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url


def _is_postgres(url: str | None) -> bool:
    return url is not None and make_url(url).get_backend_name() == "postgresql"


def _admin(url: URL):  # noqa: ANN202 - psycopg is imported only when a profile names a PostgreSQL database
    import psycopg

    admin = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    return psycopg.connect(admin, autocommit=True, connect_timeout=5)


def ensure(urls: list[str | None], *, reset: bool = False) -> list[str]:
    """Create each PostgreSQL database that does not exist (drop it first when `reset`).

    Args:
        urls: SQLAlchemy URLs of any backend (`postgresql+asyncpg://`, `postgresql+psycopg://`, `sqlite:///`, None).
        reset: Drop and recreate them: a fresh start for the demo.

    Returns:
        What was done, one line per database.
    """
    done: list[str] = []
    for raw in dict.fromkeys(u for u in urls if _is_postgres(u)):
        url = make_url(raw)
        name = url.database
        if not name:
            raise ValueError(f"{url.render_as_string(hide_password=True)} names no database")
        with _admin(url) as conn:
            if reset:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if exists is None:
                conn.execute(f'CREATE DATABASE "{name}"')
                done.append(f"created database {name} on {url.host}:{url.port or 5432}")
    return done
