"""The traffic heartbeat: every period, tell Prefect how many requests this router logged, when there were any.

`automations/silence_traffic.yaml` watches for it: when no heartbeat arrives for a model within the configured time,
the router served nothing (or is down), and a person is told. A heartbeat that cannot be sent is only logged: the
next period sends a new one, and a missed beat is what the alert is about anyway.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from contracts.events import ROUTER_TRAFFIC, TrafficPayload, model_resource
from serving.services.events import EventEmitter
from serving.services.store import Store

logger = logging.getLogger(__name__)


class TrafficHeartbeat:
    """Counts the requests logged since the last beat and emits `driftloop.router.traffic` when there were some."""

    def __init__(
        self,
        *,
        store: Store,
        emit: EventEmitter,
        model_name: str,
        replica_id: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """Tie the heartbeat to a store and an emitter.

        Args:
            store: The inference log.
            emit: Sends one event (blocking).
            model_name: The registered model served (the event's resource).
            replica_id: This process.
            clock: Current UTC time.
        """
        self.store, self.emit, self.model_name, self.replica_id, self.clock = store, emit, model_name, replica_id, clock
        self.since = clock()

    def beat(self) -> int:
        """Count and report the requests logged since the last beat. Blocking: call from a worker thread.

        Returns:
            The requests counted (0: nothing was sent).
        """
        until = self.clock()
        requests = self.store.log.count_since(self.since)
        if requests:
            payload = TrafficPayload(
                model_name=self.model_name,
                requests=requests,
                since=self.since.isoformat(),
                until=until.isoformat(),
                replica_id=self.replica_id,
            )
            try:
                self.emit(
                    event=ROUTER_TRAFFIC,
                    resource=model_resource(self.model_name),
                    related=[],
                    payload=payload.model_dump(mode="json"),
                    event_id=str(uuid.uuid4()),
                )
            except Exception as exc:  # noqa: BLE001 - a missed beat is what the silence alert is for
                logger.warning("could not send the traffic heartbeat (%d requests): %s", requests, type(exc).__name__)
        self.since = until
        return requests
