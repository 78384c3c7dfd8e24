"""Notify flow: where a notification goes when no webhook is configured; it logs the message as a warning.

The notification automations (`automations/notify_*.yaml`) send through the Prefect notification block
`driftloop-notify` when `DRIFTLOOP_NOTIFY_WEBHOOK_URL` is set; without one they run this deployment, so every message
still lands somewhere a person looks: the flow run's log in the Prefect UI, and the worker's log.
"""

from __future__ import annotations

from prefect import flow, get_run_logger


@flow(name="notify", flow_run_name="notify: {subject}")
def notify(subject: str, body: str) -> str:
    """Log one notification as a warning.

    Args:
        subject: One line.
        body: The details.

    Returns:
        The message as logged.
    """
    message = f"NOTIFICATION: {subject}\n{body}"
    get_run_logger().warning(message)
    return message
