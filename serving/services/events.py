"""Sending one router event to the Prefect API, and knowing that it was accepted (an injectable callable)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class EventEmitter(Protocol):
    """Sends one event; blocking, so call it from a worker thread. Returning means the API accepted it."""

    def __call__(
        self,
        *,
        event: str,
        resource: dict[str, str],
        related: list[dict[str, str]],
        payload: dict[str, Any],
        event_id: str,
    ) -> None:
        """Emit `event` about `resource`, linked to `related` resources, with a JSON `payload` and a fixed id."""


def emit_prefect_event(
    *,
    event: str,
    resource: dict[str, str],
    related: list[dict[str, str]],
    payload: dict[str, Any],
    event_id: str,
) -> None:
    """POST one event to the Prefect API named by `PREFECT_API_URL` and wait for its answer.

    Unlike `prefect.events.emit_event`, which queues the event for a background worker and cannot tell
    whether it arrived, this raises when the API does not accept it, so the outbox keeps it and retries.
    The id is fixed by the caller: Prefect stores and triggers on an event id once, so a resend after a
    crash is harmless. Without `PREFECT_API_URL` the event is only logged (a router without Prefect).

    Args:
        event: Dotted event name (`contracts.events`).
        resource: The resource the event is about (`prefect.resource.id`, ...).
        related: Related resources (model version, ...).
        payload: JSON-ready payload.
        event_id: UUID of the event.

    Raises:
        Exception: The API could not be reached or refused the event.
    """
    resource_id = resource.get("prefect.resource.id")
    if not os.environ.get("PREFECT_API_URL"):
        # Checked before importing prefect (a second of imports) for a router that runs without it.
        from_settings = None
        if "prefect" in sys.modules:
            from prefect.settings import PREFECT_API_URL

            from_settings = PREFECT_API_URL.value()
        if not from_settings:
            skipped = "PREFECT_API_URL is not set: skipped event %s about %s, payload %s"
            logger.info(skipped, event, resource_id, payload)
            return
    from prefect.client.orchestration import get_client
    from prefect.events import Event

    body = Event(id=event_id, event=event, resource=resource, related=related, payload=payload)
    with get_client(sync_client=True) as client:
        # The client raises on a non-2xx answer; a refused connection raises httpx.ConnectError.
        client.request("POST", "/events", json=[body.model_dump(mode="json")])
    logger.info("emitted %s about %s (id %s)", event, resource_id, event_id)
