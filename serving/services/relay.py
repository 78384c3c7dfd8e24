"""The outbox relay: sends the store's pending router events to Prefect until they are accepted, with backoff."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from serving.errors import redact
from serving.services.events import EventEmitter
from serving.services.store import Store

logger = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


class EventRelay:
    """Drains the outbox: claim the due events (a lease, so one replica sends each), send, mark sent or retry later."""

    def __init__(
        self,
        *,
        store: Store,
        emit: EventEmitter,
        replica_id: str,
        max_backoff: float = 60.0,
        lease: float = 120.0,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        """Tie the relay to a store and an emitter.

        Args:
            store: The store whose outbox is drained.
            emit: Sends one event (raises when it was not accepted).
            replica_id: This process, as named in the claims.
            max_backoff: Longest wait between two tries of one event (seconds); it doubles from 1 s.
            lease: How long a claim keeps other replicas off an event (seconds); longer than one send.
            clock: Current UTC time.
        """
        self.store = store
        self.emit = emit
        self.replica_id = replica_id
        self.max_backoff = max_backoff
        self.lease = timedelta(seconds=lease)
        self.clock = clock

    def run_once(self) -> int:
        """Send every due event once. Blocking: call from a worker thread.

        Returns:
            How many events the Prefect API accepted.

        Raises:
            StoreUnavailable: The store could not be read or written (the events stay where they are).
        """
        sent = 0
        for row in self.store.outbox.claim(self.replica_id, now=self.clock(), lease=self.lease):
            try:
                self.emit(
                    event=row.event,
                    resource=row.resource,
                    related=row.related,
                    payload=row.payload,
                    event_id=row.event_id,
                )
            except Exception as exc:
                wait = min(self.max_backoff, 2.0**row.attempts)
                error = redact(f"{type(exc).__name__}: {exc}")
                logger.warning(
                    "could not send %s (%s, try %d): %s; next try in %.0f s",
                    row.event,
                    row.event_key,
                    row.attempts + 1,
                    error,
                    wait,
                )
                now = self.clock()
                self.store.outbox.mark_failed(row.id, now=now, retry_at=now + timedelta(seconds=wait), error=error)
                continue
            self.store.outbox.mark_sent(row.id, self.clock())
            sent += 1
            logger.info("sent %s (%s) after %d failed tries", row.event, row.event_key, row.attempts)
        return sent
