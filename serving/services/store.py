"""The inference log, prediction errors, experiments and the shared run-time config, in SQL through SQLAlchemy Core."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Dialect, Engine, make_url
from sqlalchemy.pool import StaticPool

from contracts.api import Arm
from serving.errors import AlreadyLabelled, ExperimentConflict, UnknownRequest

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
    # CPU time of the model call: what the model costs, which a busy machine does not inflate (latency it does).
    sa.Column("compute_ms", sa.Float(), nullable=True),
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
    sa.Column("plan", sa.JSON(), nullable=True),
    sa.Column("sample_reached_at", UTCDateTime(), nullable=True),
    sa.Column("ended_at", UTCDateTime(), nullable=True),
    sa.Column("end_decision", sa.String(16), nullable=True),
    sa.Column("end_reason", sa.Text(), nullable=True),
)

_CONFIG_ROW = 1
_MAX_ERROR_CHARS = 4000


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


@dataclass(frozen=True, kw_only=True)
class ArmCounts:
    """Aggregate outcome of one arm."""

    requests: int
    labelled: int
    correct: int
    incorrect: int
    errors: int = 0
    users: int = 0
    """Distinct users with at least one answered or failed request."""
    labelled_users: int = 0
    """Distinct users with at least one labelled request."""
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    confusion: tuple[tuple[str, str, int], ...] = ()
    """(label, prediction, count) over the labelled requests, sorted by label then prediction."""


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


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers run beside the writer; synchronous=FULL makes each commit survive power loss."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


def _add_missing_columns(engine: Engine) -> None:
    """Add nullable columns that a store created by an older router lacks (create_all never alters a table)."""
    inspector = sa.inspect(engine)
    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present or not column.nullable:
                continue
            kind = column.type.compile(dialect=engine.dialect)
            try:
                with engine.begin() as conn:
                    conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))
            except sa.exc.DatabaseError:
                pass  # another replica added it first
            logger.info("added column %s.%s to an older store", table.name, column.name)


def _row(mapping: Any) -> InferenceRow:
    return InferenceRow(**{col.name: mapping[col.name] for col in inferences.columns})


def _experiment(mapping: Any) -> ExperimentRow:
    return ExperimentRow(**{col.name: mapping[col.name] for col in experiments.columns})


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


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
        _add_missing_columns(engine)
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

    def record_error(self, row: PredictionErrorRow) -> None:
        """Insert one failed prediction and commit before returning.

        Args:
            row: The failed request; its error text is cut to a few thousand characters.
        """
        values = {**row.__dict__, "error": row.error[:_MAX_ERROR_CHARS]}
        with self.engine.begin() as conn:
            conn.execute(sa.insert(prediction_errors).values(**values))

    def outcomes(self, experiment_id: str) -> dict[str, ArmCounts]:
        """Per-arm counts, errors, distinct users, latency percentiles and confusion cells of one experiment.

        Counts and confusion cells are aggregated in SQL; the percentiles are numpy's (linear interpolation)
        over the experiment's latencies, since SQLite has no percentile function.

        Args:
            experiment_id: e.g. `v3` or `v3-vs-v4`.

        Returns:
            Arm name to counts, for the arms that answered or failed at least one request.
        """
        c, e = inferences.c, prediction_errors.c
        labelled = c.label.is_not(None)

        def count_if(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
            return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

        counts = (
            sa.select(
                c.arm,
                sa.func.count().label("requests"),
                sa.func.count(c.label).label("labelled"),
                count_if(sa.and_(labelled, c.label == c.prediction)).label("correct"),
                count_if(sa.and_(labelled, c.label != c.prediction)).label("incorrect"),
                # COUNT(DISTINCT CASE WHEN label IS NOT NULL THEN user_id END): NULLs are not counted.
                sa.func.count(sa.distinct(sa.case((labelled, c.user_id)))).label("labelled_users"),
            )
            .where(c.experiment_id == experiment_id)
            .group_by(c.arm)
        )
        errors = (
            sa.select(e.arm, sa.func.count().label("errors")).where(e.experiment_id == experiment_id).group_by(e.arm)
        )
        # A user counts for an arm whether their requests were answered or only failed: users are the unit
        # of randomisation, so the SRM check needs them all.
        arm_users = sa.union(
            sa.select(c.arm, c.user_id).where(c.experiment_id == experiment_id),
            sa.select(e.arm, e.user_id).where(e.experiment_id == experiment_id),
        ).subquery()
        users = sa.select(arm_users.c.arm, sa.func.count(sa.distinct(arm_users.c.user_id)).label("users")).group_by(
            arm_users.c.arm
        )
        latencies = sa.select(c.arm, c.latency_ms).where(c.experiment_id == experiment_id)
        confusion = (
            sa.select(c.arm, c.label, c.prediction, sa.func.count().label("n"))
            .where(c.experiment_id == experiment_id, labelled)
            .group_by(c.arm, c.label, c.prediction)
            .order_by(c.arm, c.label, c.prediction)
        )
        with self.engine.connect() as conn:
            count_rows = {r.arm: r for r in conn.execute(counts)}
            error_counts = {r.arm: int(r.errors) for r in conn.execute(errors)}
            user_counts = {r.arm: int(r.users) for r in conn.execute(users)}
            by_arm: dict[str, list[float]] = {}
            for r in conn.execute(latencies):
                by_arm.setdefault(r.arm, []).append(float(r.latency_ms))
            cells: dict[str, list[tuple[str, str, int]]] = {}
            for r in conn.execute(confusion):
                cells.setdefault(r.arm, []).append((r.label, r.prediction, int(r.n)))
        result: dict[str, ArmCounts] = {}
        for arm in sorted(count_rows.keys() | error_counts.keys()):
            r = count_rows.get(arm)
            result[arm] = ArmCounts(
                requests=int(r.requests) if r else 0,
                labelled=int(r.labelled) if r else 0,
                correct=int(r.correct) if r else 0,
                incorrect=int(r.incorrect) if r else 0,
                errors=error_counts.get(arm, 0),
                users=user_counts.get(arm, 0),
                labelled_users=int(r.labelled_users) if r else 0,
                latency_p50_ms=_percentile(by_arm.get(arm, []), 50),
                latency_p95_ms=_percentile(by_arm.get(arm, []), 95),
                confusion=tuple(cells.get(arm, ())),
            )
        return result

    def latency_buckets(self, experiment_id: str, bucket_seconds: int) -> list[LatencyBucketRow]:
        """Per arm and time bucket of one experiment: answered requests, p95 latency and median compute time.

        Args:
            experiment_id: e.g. `v3-vs-v4`.
            bucket_seconds: Width of the buckets, aligned to the epoch.

        Returns:
            One row per (bucket, arm) that answered requests, oldest bucket first.
        """
        c = inferences.c
        stmt = sa.select(c.arm, c.ts, c.latency_ms, c.compute_ms).where(c.experiment_id == experiment_id)
        groups: dict[tuple[int, str], tuple[list[float], list[float]]] = {}
        with self.engine.connect() as conn:
            for r in conn.execute(stmt):
                key = (int(r.ts.timestamp()) // bucket_seconds, r.arm)
                latencies, computes = groups.setdefault(key, ([], []))
                latencies.append(float(r.latency_ms))
                if r.compute_ms is not None:
                    computes.append(float(r.compute_ms))
        return [
            LatencyBucketRow(
                start=datetime.fromtimestamp(index * bucket_seconds, UTC),
                arm=arm,
                requests=len(latencies),
                latency_p95_ms=float(np.percentile(latencies, 95)),
                compute_ms_median=float(np.median(computes)) if computes else None,
            )
            for (index, arm), (latencies, computes) in sorted(groups.items())
        ]

    def labelled_per_arm(self, experiment_id: str) -> dict[str, int]:
        """Labelled requests per arm of one experiment (the cheap part of `outcomes`, for the refresh loop)."""
        c = inferences.c
        stmt = (
            sa.select(c.arm, sa.func.count(c.label).label("labelled"))
            .where(c.experiment_id == experiment_id)
            .group_by(c.arm)
        )
        with self.engine.connect() as conn:
            return {r.arm: int(r.labelled) for r in conn.execute(stmt)}

    def get_experiment(self, experiment_id: str) -> ExperimentRow | None:
        """One stored experiment, or None."""
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(experiments).where(experiments.c.experiment_id == experiment_id)).first()
        return _experiment(found._mapping) if found else None

    def latest_started_experiment(self) -> ExperimentRow | None:
        """The experiment the router started serving last, or None when none ever started."""
        x = experiments.c
        stmt = (
            sa.select(experiments)
            .where(x.started_at.is_not(None))
            .order_by(x.started_at.desc(), x.experiment_id.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            found = conn.execute(stmt).first()
        return _experiment(found._mapping) if found else None

    def _insert_experiment(self, **values: Any) -> bool:
        """Insert an experiment row unless it exists; returns whether this call inserted it."""
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(experiments).values(**values))
        except sa.exc.IntegrityError:
            return False  # it exists, or another replica inserted it first
        return True

    def mark_started(
        self, *, model_name: str, experiment_id: str, champion_version: str, challenger_version: str, at: datetime
    ) -> ExperimentRow:
        """Record when the router first served an experiment; later calls (and other replicas) keep the first time.

        Args:
            model_name: Registered model name.
            experiment_id: `v{champion}-vs-v{challenger}`.
            champion_version: Champion of the pair.
            challenger_version: Challenger of the pair.
            at: When the pair was first seen.

        Returns:
            The stored experiment.
        """
        x = experiments.c
        row = self.get_experiment(experiment_id)
        if row is not None and row.started_at is not None:
            return row
        inserted = row is None and self._insert_experiment(
            experiment_id=experiment_id,
            model_name=model_name,
            champion_version=champion_version,
            challenger_version=challenger_version,
            started_at=at,
        )
        if not inserted:
            # A plan came first (or another replica raced us): set the start only where none is set.
            update = sa.update(experiments).where(x.experiment_id == experiment_id, x.started_at.is_(None))
            with self.engine.begin() as conn:
                conn.execute(update.values(started_at=at))
        row = self.get_experiment(experiment_id)
        assert row is not None
        return row

    def save_plan(
        self,
        *,
        model_name: str,
        experiment_id: str,
        champion_version: str,
        challenger_version: str,
        plan: dict[str, Any],
    ) -> ExperimentRow:
        """Store (or replace) the plan of an experiment, whether or not the router serves it yet.

        Args:
            model_name: Registered model name.
            experiment_id: `v{champion}-vs-v{challenger}`.
            champion_version: Champion of the pair.
            challenger_version: Challenger of the pair.
            plan: The `ExperimentPlan` as JSON.

        Returns:
            The stored experiment.

        Raises:
            ExperimentConflict: The experiment has ended; its plan is part of the record now.
        """
        x = experiments.c
        inserted = self.get_experiment(experiment_id) is None and self._insert_experiment(
            experiment_id=experiment_id,
            model_name=model_name,
            champion_version=champion_version,
            challenger_version=challenger_version,
            plan=plan,
        )
        if not inserted:
            update = sa.update(experiments).where(x.experiment_id == experiment_id, x.ended_at.is_(None))
            with self.engine.begin() as conn:
                updated = conn.execute(update.values(plan=plan)).rowcount
            if updated != 1:
                row = self.get_experiment(experiment_id)
                assert row is not None
                raise ExperimentConflict(
                    f"experiment {experiment_id} ended at {row.ended_at:%Y-%m-%dT%H:%M:%SZ} "
                    f"({row.end_decision}); its plan can no longer change",
                    extra={"experiment_id": experiment_id, "ended_at": str(row.ended_at)},
                )
        row = self.get_experiment(experiment_id)
        assert row is not None
        return row

    def claim_sample_reached(self, experiment_id: str, at: datetime) -> bool:
        """Set `sample_reached_at` unless set; True only for the one call (of any replica) that set it."""
        x = experiments.c
        update = sa.update(experiments).where(x.experiment_id == experiment_id, x.sample_reached_at.is_(None))
        with self.engine.begin() as conn:
            return conn.execute(update.values(sample_reached_at=at)).rowcount == 1

    def release_sample_reached(self, experiment_id: str, at: datetime) -> None:
        """Undo a claim whose event could not be emitted, so that a later refresh tries again."""
        x = experiments.c
        update = sa.update(experiments).where(x.experiment_id == experiment_id, x.sample_reached_at == at)
        with self.engine.begin() as conn:
            conn.execute(update.values(sample_reached_at=None))

    def end_experiment(
        self,
        *,
        model_name: str,
        experiment_id: str,
        champion_version: str,
        challenger_version: str,
        decision: str,
        reason: str,
        at: datetime,
    ) -> ExperimentRow:
        """Mark an experiment ended with the decision that ended it; ending it again with the same decision is a no-op.

        Args:
            model_name: Registered model name.
            experiment_id: `v{champion}-vs-v{challenger}`.
            champion_version: Champion of the pair.
            challenger_version: Challenger of the pair.
            decision: `PROMOTE` or `ROLLBACK`.
            reason: Why, in words.
            at: When it ended.

        Returns:
            The stored experiment (with the first end, when it had ended already).

        Raises:
            ExperimentConflict: It already ended with another decision.
        """
        x = experiments.c
        if self.get_experiment(experiment_id) is None:
            self._insert_experiment(
                experiment_id=experiment_id,
                model_name=model_name,
                champion_version=champion_version,
                challenger_version=challenger_version,
            )
        update = sa.update(experiments).where(x.experiment_id == experiment_id, x.ended_at.is_(None))
        with self.engine.begin() as conn:
            conn.execute(update.values(ended_at=at, end_decision=decision, end_reason=reason))
        row = self.get_experiment(experiment_id)
        assert row is not None and row.ended_at is not None
        if row.end_decision != decision:
            raise ExperimentConflict(
                f"experiment {experiment_id} already ended with {row.end_decision}: {row.end_reason}",
                extra={"experiment_id": experiment_id, "decision": row.end_decision, "rejected_decision": decision},
            )
        return row

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
