"""Settings of the local stack and the demo, read from the environment (prefix `DRIFTLOOP_`) and an optional `.env`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StackSettings(BaseSettings):
    """Ports, folders and pacing of the one-machine stack that `make demo` brings up."""

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_", env_file=".env", extra="ignore")

    home: Path = Field(Path(".driftloop"), description="Folder that holds all local state (Prefect, MLflow, router).")
    model_name: str = Field("IrisClassifier", description="Registered model the loop looks after.")
    prefect_port: int = Field(4200, description="Port of the local Prefect server (API and UI).")
    mlflow_port: int = Field(5000, description="Port of the local MLflow tracking server (API and UI).")
    router_port: int = Field(8000, description="Port of the router.")
    work_pool: str = Field("driftloop", description="Prefect process work pool the worker serves.")
    prefect_database_url: str | None = Field(
        None,
        description="Database of the Prefect server (`postgresql+asyncpg://user@host/db`); None: SQLite under home.",
    )
    mlflow_backend_store_uri: str | None = Field(
        None,
        description="MLflow's backend store (`postgresql+psycopg://user@host/db`); None: SQLite under home.",
    )
    mlflow_artifacts_destination: str | None = Field(
        None, description="Where MLflow keeps artifacts (`file:///...`, `s3://...`); None: a folder under home."
    )
    router_store_url: str | None = Field(
        None,
        description="The routers' store (the same variable the router reads); a PostgreSQL database is created "
        "when missing and reset with the demo's state.",
    )
    router_replicas: int = Field(
        1, ge=1, description="Router processes; above 1 they listen on the next ports behind nginx on router_port."
    )
    nginx_binary: str = Field("nginx", description="nginx to run in front of several replicas (path or name).")
    worker_poll_seconds: float = Field(
        1.0, description="How often the worker asks for runs (Prefect's default is 10 s)."
    )
    start_timeout_seconds: float = Field(
        120.0, description="How long each service may take to answer its health check."
    )

    demo_schedule_seconds: int = Field(30, description="Interval of the drift and A/B schedules during the demo.")
    demo_retrain_schedule_seconds: int = Field(
        0,
        ge=0,
        description="Interval of the scheduled retrain during the demo; 0 pauses it (the demo's story is drift).",
    )
    demo_stall_seconds: float = Field(
        300.0,
        description="The demo gives up (exit 1) when the loop made no progress (no new stage) for this long.",
    )
    demo_timeout_seconds: float = Field(
        1800.0, description="The demo gives up (exit 1) when the loop has not closed by then, progress or not."
    )
    demo_keep_running: bool = Field(False, description="Keep every service up after the loop closed (Ctrl-C stops).")
    sim_rate: float = Field(40.0, description="Requests per second the traffic simulator sends.")
    sim_users: int = Field(500, description="Simulated users active at a time (each replaced after its last request).")
    sim_mean_requests: float = Field(5.0, description="Mean of the geometric number of requests per user.")
    sim_user_affinity: float = Field(
        0.7, description="Share of a user's requests drawn from the user's own class (per-user heterogeneity)."
    )
    sim_label_delay_seconds: float = Field(
        20.0, description="Mean delay of a label that arrives later (exponential; 0: at once)."
    )
    sim_label_delay_max_seconds: float = Field(120.0, description="Longest delay of a late label.")
    sim_label_share: float = Field(0.8, description="Share of requests whose label arrives (inline or later).")
    sim_reference_requests: int = Field(
        300, description="Requests from the reference distribution before drift starts."
    )
    sim_scenario: str = Field("scale", description="Drift scenario: `scale`, `shift` or `none`.")
    sim_drift_columns: list[str] = Field(
        ["petal_length", "petal_width"], description="Columns the drift scenario changes."
    )
    sim_drift_factor: float = Field(1.8, description="Strength of the drift: the scale factor, or shift in std units.")
    sim_seed: int = Field(7, description="Seed of the simulator.")

    @property
    def prefect_api_url(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def router_url(self) -> str:
        return f"http://127.0.0.1:{self.router_port}"


@lru_cache
def get_settings() -> StackSettings:
    """The stack's settings, read once per process."""
    return StackSettings()
