"""The outbox: router events kept in the store until the Prefect API accepts them, claimed by one replica at a time."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from serving.services.store.database import Database
from serving.services.store.tables import OutboxRow, outbox, row_of

_MAX_ERROR_CHARS = 2000
_EVENT_ID_NAMESPACE = uuid.UUID("1b4e28ba-2fa1-11d2-883f-0016d3cca427")


@dataclass(frozen=True, kw_only=True)
class NewEvent:
    """An event to put in the outbox.

    Attributes:
        key: What makes it unique (`<event>:<experiment>`): the outbox holds one event per key, ever.
        event: Dotted event name.
        resource: The resource it is about.
        related: Related resources.
        payload: JSON payload.
    """

    key: str
    event: str
    resource: dict[str, str]
    related: list[dict[str, str]]
    payload: dict[str, Any]

    @property
    def event_id(self) -> str:
        """A UUID derived from the key: Prefect stores and triggers on an event id once, so a resend is harmless."""
        return str(uuid.uuid5(_EVENT_ID_NAMESPACE, self.key))


def enqueue(conn: Connection, event: NewEvent, now: datetime) -> bool:
    """Add an event inside the caller's transaction; False when an event with its key exists already."""
    exists = conn.execute(sa.select(outbox.c.id).where(outbox.c.event_key == event.key)).first()
    if exists:
        return False
    conn.execute(
        sa.insert(outbox).values(
            event_key=event.key,
            event_id=event.event_id,
            event=event.event,
            resource=event.resource,
            related=event.related,
            payload=event.payload,
            created_at=now,
            attempts=0,
            next_attempt_at=now,
        )
    )
    return True


class Outbox:
    """Claims due events for one replica, and records whether sending them worked. Blocking: call from a thread."""

    def __init__(self, db: Database) -> None:
        """Work on an open (or soon opened) database."""
        self.db = db

    def add(self, event: NewEvent, now: datetime | None = None) -> bool:
        """Add an event in a transaction of its own; False when its key exists already."""
        try:
            with self.db.begin("outbox_add") as conn:
                return enqueue(conn, event, now or datetime.now(UTC))
        except sa.exc.IntegrityError:
            return False  # another replica added it between our check and our insert

    def claim(self, replica_id: str, *, now: datetime, lease: timedelta, limit: int = 10) -> list[OutboxRow]:
        """Lease the due, unsent events to this replica; another replica cannot claim them until the lease ends.

        Args:
            replica_id: Who claims.
            now: Current time.
            lease: How long the claim holds (longer than one send takes).
            limit: At most this many events.

        Returns:
            The claimed events, oldest first.
        """
        o = outbox.c
        due = (
            sa.select(o.id)
            .where(
                o.sent_at.is_(None), o.next_attempt_at <= now, sa.or_(o.claimed_until.is_(None), o.claimed_until < now)
            )
            .order_by(o.id)
            .limit(limit)
        )
        claimed: list[OutboxRow] = []
        with self.db.begin("outbox_claim") as conn:
            for (event_id,) in conn.execute(due).all():
                # Conditional on the row still being free: of two replicas racing for it, one wins.
                won = conn.execute(
                    sa.update(outbox)
                    .where(
                        o.id == event_id,
                        o.sent_at.is_(None),
                        sa.or_(o.claimed_until.is_(None), o.claimed_until < now),
                    )
                    .values(claimed_by=replica_id, claimed_until=now + lease)
                ).rowcount
                if won:
                    found = conn.execute(sa.select(outbox).where(o.id == event_id)).first()
                    assert found is not None
                    claimed.append(row_of(OutboxRow, outbox, found._mapping))
        return claimed

    def mark_sent(self, event_id: int, now: datetime) -> None:
        """Record that the Prefect API accepted the event: it is never sent again."""
        with self.db.begin("outbox_sent") as conn:
            conn.execute(
                sa.update(outbox)
                .where(outbox.c.id == event_id)
                .values(sent_at=now, claimed_by=None, claimed_until=None, attempts=outbox.c.attempts + 1)
            )

    def mark_failed(self, event_id: int, *, now: datetime, retry_at: datetime, error: str) -> None:
        """Record a failed send and when to try again; the claim is released."""
        with self.db.begin("outbox_failed") as conn:
            conn.execute(
                sa.update(outbox)
                .where(outbox.c.id == event_id)
                .values(
                    attempts=outbox.c.attempts + 1,
                    next_attempt_at=retry_at,
                    last_error=error[:_MAX_ERROR_CHARS],
                    claimed_by=None,
                    claimed_until=None,
                )
            )

    def pending(self) -> int:
        """How many events wait to be sent (the outbox depth)."""
        with self.db.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(outbox).where(outbox.c.sent_at.is_(None))
                ).scalar_one()
            )

    def all(self) -> list[OutboxRow]:
        """Every event, oldest first (for tests and inspection)."""
        with self.db.connect() as conn:
            return [
                row_of(OutboxRow, outbox, r._mapping) for r in conn.execute(sa.select(outbox).order_by(outbox.c.id))
            ]
