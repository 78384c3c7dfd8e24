"""Prefect events from the router: one injectable callable, so tests can capture what would be emitted."""

from __future__ import annotations

import logging
import os
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class EventEmitter(Protocol):
    """Sends one event; blocking, so call it from a worker thread. Raising means the event was not sent."""

    def __call__(
        self, *, event: str, resource: dict[str, str], related: list[dict[str, str]], payload: dict[str, Any]
    ) -> None:
        """Emit `event` about `resource`, linked to `related` resources, with a JSON `payload`."""


def emit_prefect_event(
    *, event: str, resource: dict[str, str], related: list[dict[str, str]], payload: dict[str, Any]
) -> None:
    """Emit through `prefect.events.emit_event` when `PREFECT_API_URL` is set; otherwise only log the skip.

    Args:
        event: Dotted event name (`contracts.events`).
        resource: The resource the event is about (`prefect.resource.id`, ...).
        related: Related resources (model version, ...).
        payload: JSON-ready payload.
    """
    resource_id = resource.get("prefect.resource.id")
    if not os.environ.get("PREFECT_API_URL"):
        logger.info("PREFECT_API_URL is not set: skipped event %s about %s, payload %s", event, resource_id, payload)
        return
    # Imported here: prefect takes about a second to import, and a router without Prefect never needs it.
    from prefect import events

    # Prefect queues the event for a background worker that sends it; errors after this point are its to log.
    sent = events.emit_event(event=event, resource=resource, related=related, payload=payload)
    if sent is None:
        logger.warning("prefect did not emit %s about %s (events are disabled in its settings)", event, resource_id)
    else:
        logger.info("emitted %s about %s (id %s)", event, resource_id, sent.id)
