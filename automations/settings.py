"""Settings of the automations (notifications and silence alerts), read from the environment (prefix `DRIFTLOOP_`)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AutomationSettings(BaseSettings):
    """What `python -m automations.apply` needs beyond the YAML definitions."""

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_", env_file=".env", extra="ignore")

    notify_webhook_url: str | None = Field(
        None,
        description="Webhook every notification is POSTed to (a Slack incoming webhook or any HTTP endpoint, JSON "
        "`{subject, body, text}`), through the Prefect notification block `notify_block`. None: each notification "
        "runs the `notify` deployment, which logs it as a warning in its flow run.",
    )
    notify_block: str = Field("driftloop-notify", description="Name of the Prefect notification block.")
    silence_drift_multiple: float = Field(
        3.0, description="The drift monitor is silent when no check arrived within this many of its schedule intervals."
    )
    silence_traffic_minutes: float = Field(
        60.0, description="The router is silent when it reported no served request for this many minutes."
    )


@lru_cache
def get_settings() -> AutomationSettings:
    """The automations' settings, read once per process."""
    return AutomationSettings()
