"""The router's store: one object that opens the database and holds its parts (log, experiments, config, outbox)."""

from __future__ import annotations

from serving.services.store.config import SharedConfig
from serving.services.store.database import DEFAULT_POOL_SIZE, Database
from serving.services.store.experiments import ExperimentRecords
from serving.services.store.inferences import InferenceLog
from serving.services.store.outbox import NewEvent, Outbox
from serving.services.store.shadow import ShadowLog
from serving.services.store.tables import (
    ExperimentRow,
    InferenceRow,
    LatencyBucketRow,
    OutboxRow,
    PredictionErrorRow,
    ShadowRow,
    new_request_id,
)

__all__ = [
    "ExperimentRow",
    "InferenceRow",
    "LatencyBucketRow",
    "NewEvent",
    "OutboxRow",
    "PredictionErrorRow",
    "ShadowRow",
    "Store",
    "new_request_id",
]


class Store:
    """The router's SQL store; every part is blocking, so call it from a worker thread, not the event loop.

    Attributes:
        db: Engine, transactions and store errors as 503s.
        log: Predictions, labels, failures and outcome counts.
        experiments: Start, plan, sample reached and end of each experiment.
        config: The split shared by every replica.
        outbox: Router events on their way to Prefect.
        shadow: The challenger's shadow predictions (shadow mode).
    """

    def __init__(
        self, url: str, *, busy_timeout: float = 2.0, retry_after: int = 1, pool_size: int = DEFAULT_POOL_SIZE
    ) -> None:
        """Describe the store; nothing is opened until `open`.

        Args:
            url: SQLAlchemy URL (`sqlite:////abs/router.db`, `postgresql+psycopg://...`).
            busy_timeout: Seconds a statement waits for a lock before the request gets a 503.
            retry_after: Seconds a client is told to wait after a store failure.
            pool_size: Connections kept by a server database's pool (one per worker thread); SQLite ignores it.
        """
        self.url = url
        self.db = Database(url, busy_timeout=busy_timeout, retry_after=retry_after, pool_size=pool_size)
        self.log = InferenceLog(self.db)
        self.experiments = ExperimentRecords(self.db)
        self.config = SharedConfig(self.db)
        self.outbox = Outbox(self.db)
        self.shadow = ShadowLog(self.db)

    def open(self) -> None:
        """Connect and create what is missing (idempotent)."""
        self.db.open()

    def close(self) -> None:
        """Dispose of the connection pool."""
        self.db.close()
