"""Settings of the online side (router), read from the environment (prefix `DRIFTLOOP_`) and an optional `.env`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from contracts.auth import RouterTokens
from serving.services.store.database import SqliteSynchronous


class RouterSettings(RouterTokens):
    """Everything the router needs to serve, split, record and guard (tokens: see `contracts.auth`)."""

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_", env_file=".env", extra="ignore")

    home: Path = Field(Path(".driftloop"), description="Folder that holds all local state.")
    mlflow_tracking_uri: str = Field("http://127.0.0.1:5000", description="MLflow tracking server (or store) URI.")
    model_name: str = Field("IrisClassifier", description="Registered model to serve (by alias).")
    router_store_url: str | None = Field(
        None, description="SQLAlchemy URL of the inference log; None: SQLite file `router.db` under `home`."
    )
    router_host: str = Field("127.0.0.1", description="Interface the router binds to (non-loopback needs tokens).")
    router_port: int = Field(8000, description="Port the router listens on.")
    ab_split_b: float = Field(0.5, description="Initial share of users sent to the challenger (0..1).")
    assignment_salt: str = Field(
        "driftloop",
        description="Salt of the user hash when experiments do not draw their own (see `fresh_salt_per_experiment`), "
        "and of experiments stored by an older router.",
    )
    fresh_salt_per_experiment: bool = Field(
        True,
        description="Each experiment draws a fresh secret salt, kept in the store: every experiment reshuffles users "
        "and nobody outside can pick a user id that lands on an arm. False: every experiment uses `assignment_salt` "
        "(reproducible assignment, for tests).",
    )
    model_refresh_seconds: float = Field(5.0, description="How often the router re-reads the aliases in MLflow.")
    model_retry_seconds: float = Field(
        60.0, description="A version that failed to load is tried again after this long (not at every refresh)."
    )
    ready_max_refresh_age_seconds: float = Field(
        60.0, description="GET /ready fails when the last successful alias refresh is older than this."
    )
    max_body_bytes: int = Field(64 * 1024, description="Largest request body accepted (413 above).")
    max_abs_feature: float = Field(
        3.4e38,
        description="Largest magnitude of a numeric feature (422 above): many models cast to float32 internally.",
    )
    store_busy_timeout_seconds: float = Field(
        2.0, description="How long a store write waits for a lock before the request gets 503."
    )
    store_sqlite_synchronous: SqliteSynchronous = Field(
        "full",
        description="SQLite store only: `full` syncs the disk at every (group) commit, so an acknowledged record "
        "survives a power loss; `normal` leaves the sync to WAL checkpoints: an acknowledged record survives a crash "
        "or kill -9 of the router but not of the machine, and commits stop waiting for the disk.",
    )
    worker_threads: int = Field(
        40,
        ge=1,
        description="Threads that do blocking work (model calls, store reads and writes): 3 of them run the "
        "micro-batches of /predict and its shadow scoring, the rest everything else; a server database's connection "
        "pool keeps this many connections (at least 4), so replicas x threads must fit its max_connections.",
    )
    gil_switch_interval_ms: float = Field(
        1.0,
        gt=0,
        description="`python -m serving` only: how long a thread of the router may hold Python's interpreter lock "
        "while another waits for it (`sys.setswitchinterval`; Python's default is 5 ms). Shorter keeps the event "
        "loop from waiting behind a long batch of shadow scoring or a large group commit.",
    )
    store_retry_after_seconds: int = Field(1, description="Retry-After of a 503 caused by the store.")
    outbox_interval_seconds: float = Field(1.0, description="How often pending router events are sent to Prefect.")
    outbox_max_backoff_seconds: float = Field(60.0, description="Longest wait between two tries of one event.")
    traffic_heartbeat_seconds: float = Field(
        60.0,
        description="How often the router reports the requests it logged (`driftloop.router.traffic`, only when "
        "there were some): the traffic silence alert watches for it. 0 turns it off.",
    )

    predict_batch_window_ms: float = Field(
        2.0,
        description="How long an idle router waits at most for more /predict requests to join a micro-batch (one "
        "predict per arm, one commit). Under load batches form without waiting. 0: no wait.",
    )
    predict_batch_quiet_ms: float = Field(
        0.25,
        ge=0,
        description="An idle router stops waiting for a micro-batch to fill before the window ends once this long "
        "passes with no new /predict request.",
    )
    predict_batch_burst_memory: int = Field(
        8,
        ge=0,
        description="An idle router also stops waiting once as many /predict requests are queued as the largest of "
        "its last N micro-batches that began after an idle spell (clients that wait for their answers come back in "
        "bursts of that size). 0: always wait for the quiet spell.",
    )
    predict_batch_max: int = Field(64, ge=1, description="Most requests in one micro-batch.")
    predict_queue_max: int = Field(
        2048, ge=1, description="Most requests waiting for a micro-batch; more are refused with 503 and Retry-After."
    )
    predict_batch_rows_max: int = Field(256, ge=1, description="Most rows in one POST /predict/batch (413 above).")
    lean_pipeline: bool = Field(
        True,
        description="Run a PyCaret pipeline's fitted steps directly when that gives identical predictions on the "
        "input example and a reference sample (checked at load; else the model's own predict, said in /health).",
    )
    shadow_mode: bool = Field(
        False,
        description="The challenger also scores every champion request off the request path; its predictions are "
        "logged as shadow records (never served) and reported beside the experiment's counts.",
    )
    shadow_queue_max: int = Field(
        4096, ge=1, description="Most champion requests waiting for a shadow prediction (more are dropped, counted)."
    )

    def store_url(self) -> str:
        """The inference log's SQLAlchemy URL."""
        return self.router_store_url or f"sqlite:///{(self.home / 'router.db').resolve()}"


@lru_cache
def get_settings() -> RouterSettings:
    """The router's settings, read once per process."""
    return RouterSettings()
