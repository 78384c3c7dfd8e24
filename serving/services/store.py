"""The inference log and the shared run-time config, in SQL (SQLite or Postgres) through SQLAlchemy Core."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect, Engine, make_url
from sqlalchemy.pool import StaticPool

from contracts.api import Arm
from serving.errors import AlreadyLabelled, UnknownRequest

logger = logging.getLogger(__name__)


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
)

router_config = sa.Table(
    "router_config",
    metadata,
    # One row (id 1): the split is shared by every replica on this store.
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("ab_split_b", sa.Float(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

_CONFIG_ROW = 1


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


@dataclass(frozen=True, kw_only=True)
class ArmCounts:
    """Aggregate outcome of one arm."""

    requests: int
    labelled: int
    correct: int
    incorrect: int


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers run beside the writer; synchronous=FULL makes each commit survive power loss."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


def _row(mapping: Any) -> InferenceRow:
    return InferenceRow(**{col.name: mapping[col.name] for col in inferences.columns})


class Store:
    """Blocking SQL store of the router: call its methods from a worker thread, not the event loop."""

    def __init__(self, url: str) -> None:
        """Describe the store; nothing is opened until `open`.

        Args:
            url: SQLAlchemy URL (`sqlite:////abs/router.db`, `postgresql+psycopg://...`).
        """
        self.url = url
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        """The open engine."""
        if self._engine is None:
            raise RuntimeError("Store.open() was not called")
        return self._engine

    def open(self) -> None:
        """Connect and create the tables if they do not exist (idempotent)."""
        if self._engine is not None:
            return
        url = make_url(self.url)
        if url.get_backend_name() == "sqlite":
            database = url.database or ""
            in_memory = database in ("", ":memory:")
            if not in_memory and not database.startswith("file:"):
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(
                url,
                # Handlers run in a thread pool, so one connection may be used by several threads in turn.
                connect_args={"check_same_thread": False, "timeout": 30},
                # An in-memory database lives only as long as its one connection.
                **({"poolclass": StaticPool} if in_memory else {}),
            )
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = sa.create_engine(url, pool_pre_ping=True)
        try:
            metadata.create_all(engine)
        except sa.exc.DatabaseError:
            # Another replica may have created the tables between our check and our CREATE.
            metadata.create_all(engine)
        self._engine = engine
        logger.info("inference store open at %s", url.render_as_string(hide_password=True))

    def close(self) -> None:
        """Dispose of the connection pool."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def record(self, row: InferenceRow) -> None:
        """Insert one prediction and commit before returning.

        Args:
            row: The prediction to log.
        """
        with self.engine.begin() as conn:
            conn.execute(sa.insert(inferences).values(**row.__dict__))

    def get(self, request_id: str) -> InferenceRow | None:
        """One logged prediction by id, or None."""
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(inferences).where(inferences.c.request_id == request_id)).first()
        return _row(found._mapping) if found else None

    def set_label(self, request_id: str, label: str) -> InferenceRow:
        """Attach a label to a logged prediction; labels are write-once.

        Args:
            request_id: The prediction to label.
            label: The true label, as a string.

        Returns:
            The labelled prediction.

        Raises:
            UnknownRequest: No prediction has this id.
            AlreadyLabelled: The prediction already has a label.
        """
        c = inferences.c
        with self.engine.begin() as conn:
            # The `label IS NULL` guard makes check-and-set one atomic statement, even across replicas.
            updated = conn.execute(
                sa.update(inferences).where(c.request_id == request_id, c.label.is_(None)).values(label=label)
            ).rowcount
            found = conn.execute(sa.select(inferences).where(c.request_id == request_id)).first()
        if found is None:
            raise UnknownRequest(f"unknown request_id {request_id!r}: no prediction with this id was logged")
        row = _row(found._mapping)
        if updated != 1:
            raise AlreadyLabelled(
                f"request {request_id!r} already has label {row.label!r}; labels are write-once",
                extra={"request_id": request_id, "label": row.label, "rejected_label": label},
            )
        return row

    def recent(
        self, *, limit: int = 500, since: datetime | None = None, labelled: bool | None = None
    ) -> list[InferenceRow]:
        """The newest logged predictions, newest first.

        Args:
            limit: At most this many rows.
            since: Only rows with `ts >= since` (naive means UTC).
            labelled: True: only labelled rows; False: only unlabelled; None: both.

        Returns:
            The rows, newest first.
        """
        c = inferences.c
        stmt = sa.select(inferences).order_by(c.ts.desc(), c.request_id.desc()).limit(limit)
        if since is not None:
            stmt = stmt.where(c.ts >= since)
        if labelled is not None:
            stmt = stmt.where(c.label.is_not(None) if labelled else c.label.is_(None))
        with self.engine.connect() as conn:
            return [_row(r._mapping) for r in conn.execute(stmt)]

    def outcomes(self, experiment_id: str) -> dict[str, ArmCounts]:
        """Per-arm counts of one experiment, aggregated in SQL.

        Args:
            experiment_id: e.g. `v3` or `v3-vs-v4`.

        Returns:
            Arm name to counts, for the arms that served at least one request.
        """
        c = inferences.c
        labelled = c.label.is_not(None)

        def count_if(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
            return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

        stmt = (
            sa.select(
                c.arm,
                sa.func.count().label("requests"),
                sa.func.count(c.label).label("labelled"),
                count_if(sa.and_(labelled, c.label == c.prediction)).label("correct"),
                count_if(sa.and_(labelled, c.label != c.prediction)).label("incorrect"),
            )
            .where(c.experiment_id == experiment_id)
            .group_by(c.arm)
        )
        with self.engine.connect() as conn:
            return {
                r.arm: ArmCounts(
                    requests=int(r.requests),
                    labelled=int(r.labelled),
                    correct=int(r.correct),
                    incorrect=int(r.incorrect),
                )
                for r in conn.execute(stmt)
            }

    def get_split(self) -> float | None:
        """The shared challenger share, or None when none was ever stored."""
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(router_config.c.ab_split_b).where(router_config.c.id == _CONFIG_ROW)
            ).scalar_one_or_none()
        return None if value is None else float(value)

    def ensure_split(self, default: float) -> float:
        """Store `default` as the split unless one is stored already.

        Args:
            default: Initial split (from settings).

        Returns:
            The split in force.
        """
        if (current := self.get_split()) is not None:
            return current
        try:
            with self.engine.begin() as conn:
                values = {"ab_split_b": default, "updated_at": datetime.now(UTC)}
                conn.execute(sa.insert(router_config).values(id=_CONFIG_ROW, **values))
        except sa.exc.IntegrityError:
            pass  # another replica stored its value first; theirs wins
        current = self.get_split()
        assert current is not None
        return current

    def set_split(self, value: float) -> float:
        """Store a new split for every replica.

        Args:
            value: Challenger share in [0, 1].

        Returns:
            The stored split.
        """
        values = {"ab_split_b": value, "updated_at": datetime.now(UTC)}
        update = sa.update(router_config).where(router_config.c.id == _CONFIG_ROW).values(**values)
        with self.engine.begin() as conn:
            updated = conn.execute(update).rowcount
        if updated == 0:
            try:
                with self.engine.begin() as conn:
                    conn.execute(sa.insert(router_config).values(id=_CONFIG_ROW, **values))
            except sa.exc.IntegrityError:
                # Another replica inserted the row first: overwrite it, the latest write wins.
                with self.engine.begin() as conn:
                    conn.execute(update)
        return value
