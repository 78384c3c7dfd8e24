"""The router's SQL tables and the typed rows read from them (SQLAlchemy Core, any backend)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from contracts.api import Arm


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite has no time zones)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Normalize to UTC; naive values are taken as UTC."""
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        # SQLite stores the text form and would drop the offset, so store naive UTC: text order = time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Always hand back aware UTC datetimes."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def new_request_id() -> str:
    """A new prediction's id: a UUID version 7 (RFC 9562) as 32 hex digits, time-ordered.

    Unix milliseconds come first, then 12 bits of the millisecond's fraction and 62 random bits. Ids that follow
    the time land at the end of the primary-key index instead of on a random page of it: a random id (version 4)
    dirtied about one index page per row, which a group commit writes to the WAL and syncs.
    """
    ms, ns = divmod(time.time_ns(), 1_000_000)
    value = (ms << 80) | (0x7 << 76) | ((ns * 4096 // 1_000_000) << 64) | (0b10 << 62) | secrets.randbits(62)
    return f"{value:032x}"


metadata = sa.MetaData()

inferences = sa.Table(
    "inferences",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("ts", UTCDateTime(), nullable=False, index=True),
    sa.Column("user_id", sa.String(256), nullable=False),
    sa.Column("arm", sa.String(16), nullable=False),
    sa.Column("model_name", sa.String(256), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("experiment_id", sa.String(160), nullable=False, index=True),
    sa.Column("features", sa.JSON(), nullable=False),
    sa.Column("prediction", sa.Text(), nullable=False),
    sa.Column("label", sa.Text(), nullable=True),
    sa.Column("latency_ms", sa.Float(), nullable=False),
    # CPU time of the model call: what the model costs, which a busy machine does not inflate (latency it does).
    sa.Column("compute_ms", sa.Float(), nullable=True),
    sa.Column("idempotency_key", sa.String(128), nullable=True),
    sa.Column("fingerprint", sa.String(64), nullable=True),
    # A retried /predict with the same key finds its first answer here (NULLs never collide). An index, not a
    # column constraint, so that `Database.open` can add it to a log written by an older router.
    sa.Index("ux_inferences_idempotency_key", "idempotency_key", unique=True),
)

router_config = sa.Table(
    "router_config",
    metadata,
    # One row (id 1): the split is shared by every replica on this store.
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("ab_split_b", sa.Float(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

prediction_errors = sa.Table(
    "prediction_errors",
    metadata,
    # A request whose model raised: never answered with a prediction, but it counts against its arm.
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("ts", UTCDateTime(), nullable=False),
    sa.Column("user_id", sa.String(256), nullable=False),
    sa.Column("arm", sa.String(16), nullable=False),
    sa.Column("model_name", sa.String(256), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("experiment_id", sa.String(160), nullable=False, index=True),
    sa.Column("error", sa.Text(), nullable=False),
    sa.Column("idempotency_key", sa.String(128), nullable=True),
    # A retried request that fails again is one error, not two.
    sa.Index("ux_prediction_errors_idempotency_key", "idempotency_key", unique=True),
)

experiments = sa.Table(
    "experiments",
    metadata,
    # One row per champion/challenger pair, shared by every replica on this store.
    sa.Column("experiment_id", sa.String(160), primary_key=True),
    sa.Column("model_name", sa.String(256), nullable=False),
    sa.Column("champion_version", sa.String(64), nullable=False),
    sa.Column("challenger_version", sa.String(64), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=True, index=True),
    sa.Column("plan", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("sample_reached_at", UTCDateTime(), nullable=True),
    sa.Column("ended_at", UTCDateTime(), nullable=True),
    sa.Column("end_decision", sa.String(16), nullable=True),
    sa.Column("end_reason", sa.Text(), nullable=True),
    # Secret salt of the user hash, fresh for each experiment (NULL: an experiment of an older router, which
    # keeps the settings' salt it started with).
    sa.Column("salt", sa.String(64), nullable=True),
    # Paused (after an INVALID look, or by an operator): the champion serves everyone, the challenger keeps its alias.
    sa.Column("paused_at", UTCDateTime(), nullable=True),
    sa.Column("pause_reason", sa.Text(), nullable=True),
    sa.Column("resumed_at", UTCDateTime(), nullable=True),
)

outbox = sa.Table(
    "outbox",
    metadata,
    # Router events waiting for the Prefect API to accept them. `event_key` is unique: an event that must
    # happen once per experiment (sample reached) is written once, by whichever replica got there first.
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("event_key", sa.String(255), nullable=False, unique=True),
    sa.Column("event_id", sa.String(36), nullable=False),
    sa.Column("event", sa.String(255), nullable=False),
    sa.Column("resource", sa.JSON(), nullable=False),
    sa.Column("related", sa.JSON(), nullable=False),
    sa.Column("payload", sa.JSON(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False, default=0),
    sa.Column("next_attempt_at", UTCDateTime(), nullable=False, index=True),
    sa.Column("claimed_by", sa.String(64), nullable=True),
    sa.Column("claimed_until", UTCDateTime(), nullable=True),
    sa.Column("sent_at", UTCDateTime(), nullable=True, index=True),
    sa.Column("last_error", sa.Text(), nullable=True),
)

shadow_inferences = sa.Table(
    "shadow_inferences",
    metadata,
    # Shadow mode: what the challenger would have answered to a champion request (never served). Keyed by the
    # champion's request id, so its label (inline or from /feedback) is read from `inferences` when reporting.
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("ts", UTCDateTime(), nullable=False),
    sa.Column("experiment_id", sa.String(160), nullable=False, index=True),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("prediction", sa.Text(), nullable=False),
    sa.Column("champion_prediction", sa.Text(), nullable=False),
)

heartbeats = sa.Table(
    "replica_heartbeats",
    metadata,
    # One row per router process: written by GET /ready to prove the store takes writes.
    sa.Column("replica_id", sa.String(64), primary_key=True),
    sa.Column("seen_at", UTCDateTime(), nullable=False),
)


@dataclass(frozen=True, kw_only=True)
class InferenceRow:
    """One logged prediction."""

    request_id: str
    ts: datetime
    user_id: str
    arm: Arm
    model_name: str
    model_version: str
    experiment_id: str
    features: dict[str, Any]
    prediction: str
    label: str | None
    latency_ms: float
    compute_ms: float | None = None
    idempotency_key: str | None = None
    fingerprint: str | None = None
    """Digest of the request that carried `idempotency_key`: a reuse for another request is refused."""


@dataclass(frozen=True, kw_only=True)
class ShadowRow:
    """The challenger's shadow prediction for one champion request."""

    request_id: str
    ts: datetime
    experiment_id: str
    model_version: str
    prediction: str
    champion_prediction: str


@dataclass(frozen=True, kw_only=True)
class LatencyBucketRow:
    """Latency and compute time of one arm's answered requests within one time bucket."""

    start: datetime
    arm: Arm
    requests: int
    latency_p95_ms: float
    compute_ms_median: float | None


@dataclass(frozen=True, kw_only=True)
class PredictionErrorRow:
    """One request whose prediction raised."""

    request_id: str
    ts: datetime
    user_id: str
    arm: Arm
    model_name: str
    model_version: str
    experiment_id: str
    error: str
    idempotency_key: str | None = None


@dataclass(frozen=True, kw_only=True)
class ExperimentRow:
    """One stored experiment (a champion/challenger pair)."""

    experiment_id: str
    model_name: str
    champion_version: str
    challenger_version: str
    started_at: datetime | None
    plan: dict[str, Any] | None
    """The `ExperimentPlan` as JSON."""
    sample_reached_at: datetime | None
    ended_at: datetime | None
    end_decision: str | None
    end_reason: str | None
    salt: str | None = None
    paused_at: datetime | None = None
    pause_reason: str | None = None
    resumed_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class OutboxRow:
    """One router event, pending or sent."""

    id: int
    event_key: str
    event_id: str
    event: str
    resource: dict[str, str]
    related: list[dict[str, str]]
    payload: dict[str, Any]
    created_at: datetime
    attempts: int
    next_attempt_at: datetime
    claimed_by: str | None
    claimed_until: datetime | None
    sent_at: datetime | None
    last_error: str | None


def row_of(cls: type[Any], table: sa.Table, mapping: Any) -> Any:
    """Build a row dataclass from a result mapping, column by column."""
    return cls(**{col.name: mapping[col.name] for col in table.columns})
