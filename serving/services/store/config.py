"""The run-time config shared by every replica on one store: the challenger's share of users."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from serving.services.store.database import Database
from serving.services.store.tables import router_config

_CONFIG_ROW = 1


class SharedConfig:
    """Blocking reads and writes of the one config row: call from a worker thread."""

    def __init__(self, db: Database) -> None:
        """Work on an open (or soon opened) database."""
        self.db = db

    def get_split(self) -> float | None:
        """The shared challenger share, or None when none was ever stored."""
        with self.db.connect() as conn:
            value = conn.execute(
                sa.select(router_config.c.ab_split_b).where(router_config.c.id == _CONFIG_ROW)
            ).scalar_one_or_none()
        return None if value is None else float(value)

    def ensure_split(self, default: float) -> float:
        """Store `default` as the split unless one is stored already.

        Args:
            default: Initial split (from settings).

        Returns:
            The split in force.
        """
        if (current := self.get_split()) is not None:
            return current
        try:
            with self.db.begin("config") as conn:
                values = {"ab_split_b": default, "updated_at": datetime.now(UTC)}
                conn.execute(sa.insert(router_config).values(id=_CONFIG_ROW, **values))
        except sa.exc.IntegrityError:
            pass  # another replica stored its value first; theirs wins
        current = self.get_split()
        assert current is not None
        return current

    def set_split(self, value: float) -> float:
        """Store a new split for every replica.

        Args:
            value: Challenger share in [0, 1].

        Returns:
            The stored split.
        """
        values = {"ab_split_b": value, "updated_at": datetime.now(UTC)}
        update = sa.update(router_config).where(router_config.c.id == _CONFIG_ROW).values(**values)
        with self.db.begin("config") as conn:
            updated = conn.execute(update).rowcount
        if updated == 0:
            try:
                with self.db.begin("config") as conn:
                    conn.execute(sa.insert(router_config).values(id=_CONFIG_ROW, **values))
            except sa.exc.IntegrityError:
                # Another replica inserted the row first: overwrite it, the latest write wins.
                with self.db.begin("config") as conn:
                    conn.execute(update)
        return value
