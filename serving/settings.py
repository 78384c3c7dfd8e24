"""Settings of the online side (router), read from the environment (prefix `DRIFTLOOP_`) and an optional `.env`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RouterSettings(BaseSettings):
    """Everything the router needs to serve, split and record."""

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_", env_file=".env", extra="ignore")

    home: Path = Field(Path(".driftloop"), description="Folder that holds all local state.")
    mlflow_tracking_uri: str = Field("http://127.0.0.1:5000", description="MLflow tracking server (or store) URI.")
    model_name: str = Field("IrisClassifier", description="Registered model to serve (by alias).")
    router_store_url: str | None = Field(
        None, description="SQLAlchemy URL of the inference log; None: SQLite file `router.db` under `home`."
    )
    router_host: str = Field("127.0.0.1", description="Interface the router binds to.")
    router_port: int = Field(8000, description="Port the router listens on.")
    ab_split_b: float = Field(0.5, description="Initial share of users sent to the challenger (0..1).")
    assignment_salt: str = Field("driftloop", description="Salt of the user hash; change it to reshuffle users.")
    model_refresh_seconds: float = Field(5.0, description="How often the router re-reads the aliases in MLflow.")

    def store_url(self) -> str:
        """The inference log's SQLAlchemy URL."""
        return self.router_store_url or f"sqlite:///{(self.home / 'router.db').resolve()}"


@lru_cache
def get_settings() -> RouterSettings:
    """The router's settings, read once per process."""
    return RouterSettings()
