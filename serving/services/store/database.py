"""The store's connection: engine, SQLite pragmas, short lock waits, schema upgrades, and store errors as 503s."""

from __future__ import annotations

import collections
import contextlib
import logging
import operator
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, Engine, make_url
from sqlalchemy.pool import StaticPool

from serving.errors import StoreUnavailable
from serving.services.store.tables import heartbeats, metadata

logger = logging.getLogger(__name__)

DEFAULT_POOL_SIZE = 40
"""anyio's default worker-thread count: the connections a server database's pool keeps unless told otherwise."""

WriteObserver = Callable[[str, float], None]
"""Told the name and duration (seconds) of every committed write, for the store-latency metric."""

_CREATE_ATTEMPTS = 8
"""Tries at creating the schema while other replicas may be creating it too (one pass of each is enough for all)."""

# Errors that say "not now" (locked, read-only, unreachable, pool exhausted) rather than "your request is wrong".
_UNAVAILABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)


SqliteSynchronous = Literal["full", "normal"]
"""When a SQLite commit reaches the disk: `full` syncs it at every commit, so an acknowledged record survives a power
loss; `normal` (in WAL mode) syncs at checkpoints only, so it survives a crash or kill of the router, not of the
machine."""


def _sqlite_pragmas(synchronous: SqliteSynchronous, busy_timeout: float) -> Callable[[Any, Any], None]:
    """The pragmas each new SQLite connection gets: WAL lets readers run beside the writer; `synchronous` as told.

    The journal mode is kept in the file, so only the first connection to a new file switches it. That switch needs
    the file to itself and SQLite refuses it at once ("database is locked") while another process (a replica
    starting beside this one) is creating the schema: it is retried for up to `busy_timeout` seconds.
    """

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            deadline = time.monotonic() + busy_timeout
            while True:
                try:
                    if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                        cursor.execute("PRAGMA journal_mode=WAL")
                    break
                except dbapi_connection.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() >= deadline:
                        raise
                    time.sleep(0.01)
            cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
        finally:
            cursor.close()

    return on_connect


def _json_text(value: Any) -> str:
    """JSON columns' text: msgspec's encoder, several times faster than `json.dumps` on the group commit's path
    (compact, UTF-8; a non-finite float becomes null where `json.dumps` would write the invalid `NaN`)."""
    return msgspec.json.encode(value).decode()


def _created_meanwhile(exc: sa.exc.DatabaseError) -> bool:
    """Whether a CREATE or ADD COLUMN failed because another replica did it first (SQLite's and PostgreSQL's words)."""
    text = str(exc.orig).lower()
    return any(words in text for words in ("already exists", "duplicate column", "duplicate key"))


class WriteTurns:
    """The writes of one process to one SQLite file: one at a time, in the order they asked.

    SQLite has one writer per file and lets the others poll for its lock until their busy timeout. Under load the
    group commits of `/predict` follow each other so closely, each holding the lock a little longer while its thread
    waits for the interpreter lock, that a label or shadow write polling beside them can miss every opening and fail
    with "database is locked". Queued here instead, a write waits for the writes that asked before it and no more.
    A thread that holds its turn may begin again (nested writes of one thread do not wait for themselves).
    """

    _waiter = staticmethod(threading.Lock)
    """Makes the lock a queued write waits on (held until `release` hands the turn over)."""

    def __init__(self) -> None:
        """No write in progress."""
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._depth = 0
        self._waiting: collections.deque[tuple[int, Any]] = collections.deque()

    def acquire(self, timeout: float) -> bool:
        """Wait for this thread's turn; False when it did not come within `timeout` seconds."""
        me = threading.get_ident()
        with self._lock:
            if self._owner is None or self._owner == me:
                self._owner = me
                self._depth += 1
                return True
            waiter = self._waiter()
            waiter.acquire()
            self._waiting.append((me, waiter))
        try:
            handed_over = waiter.acquire(timeout=max(0.0, timeout))
        except BaseException:  # interrupted while waiting: leave the queue, or pass on a turn handed over meanwhile
            if not self._leave(me, waiter):
                self.release()
            raise
        if handed_over or not self._leave(me, waiter):
            return True  # `release` handed the turn over (perhaps just as the wait timed out)
        return False

    def _leave(self, me: int, waiter: Any) -> bool:
        """Take a waiter out of the queue; False when it is not there any more (the turn was handed to it)."""
        with self._lock:
            if (me, waiter) in self._waiting:
                self._waiting.remove((me, waiter))
                return True
            return False

    def release(self) -> None:
        """End this thread's turn (or one level of it): the longest waiting write goes next.

        Raises:
            RuntimeError: This thread does not hold the turn.
        """
        with self._lock:
            if self._owner != threading.get_ident() or self._depth <= 0:
                raise RuntimeError("release of a write turn this thread does not hold")
            self._depth -= 1
            if self._depth:
                return
            if self._waiting:
                self._owner, waiter = self._waiting.popleft()
                self._depth = 1
                waiter.release()
            else:
                self._owner = None


@dataclass(frozen=True)
class _Rendered:
    """A `BulkInsert` rendered for one dialect."""

    sql: str
    names: tuple[str, ...]
    """Bind names in the statement's parameter order."""
    values_of: Callable[[Any], tuple[Any, ...]]
    converting: tuple[tuple[int, Callable[[Any], Any]], ...]
    """(position, bind processor) of the columns whose values SQLAlchemy converts before the driver sees them."""
    positional: bool


class BulkInsert:
    """An INSERT of every column of one table, for many rows at once: one driver `executemany`, no work per row but
    each column's own bind processing.

    `conn.execute(sa.insert(table), [dicts])` looks up its compiled statement and builds each row's parameters
    through SQLAlchemy's generic machinery on every call; on the request path's group commit that was a large share
    of a request's CPU. Here the statement is rendered once per dialect and each row's values go through the same
    bind processors SQLAlchemy applies (time zones, JSON), so the driver gets the same values.
    """

    def __init__(self, table: sa.Table) -> None:
        """Describe the insert; it is rendered for a dialect on first use.

        Args:
            table: The table; rows given to `execute` carry an attribute per column (the table's row dataclass).
        """
        self.table = table
        self._rendered: dict[Dialect, _Rendered] = {}

    def _render(self, dialect: Dialect) -> _Rendered:
        compiled = sa.insert(self.table).compile(dialect=dialect)
        positional = bool(compiled.positional)
        names = tuple(compiled.positiontup or ()) if positional else tuple(c.key for c in self.table.columns)
        columns = {c.key: c for c in self.table.columns}
        processors = [columns[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names]
        get = operator.attrgetter(*names)
        rendered = _Rendered(
            sql=compiled.string,
            names=names,
            values_of=get if len(names) > 1 else lambda row: (get(row),),
            converting=tuple((i, p) for i, p in enumerate(processors) if p is not None),
            positional=positional,
        )
        self._rendered[dialect] = rendered
        return rendered

    def execute(self, conn: Connection, rows: Sequence[Any]) -> None:
        """Insert `rows` (objects with an attribute per column) within the open transaction of `conn`.

        Raises:
            sqlalchemy.exc.IntegrityError: A row broke a constraint.
        """
        if not rows:
            return
        r = self._rendered.get(conn.dialect) or self._render(conn.dialect)
        params: list[Any] = []
        for row in rows:
            values: Any = r.values_of(row)
            if r.converting:
                values = list(values)
                for i, process in r.converting:
                    values[i] = process(values[i])
            params.append(tuple(values) if r.positional else dict(zip(r.names, values, strict=True)))
        conn.exec_driver_sql(r.sql, params)


class Database:
    """Opens the engine and hands out transactions whose store failures become `StoreUnavailable` (503)."""

    def __init__(
        self, url: str, *, busy_timeout: float = 2.0, retry_after: int = 1, pool_size: int = DEFAULT_POOL_SIZE
    ) -> None:
        """Describe the database; nothing is opened until `open`.

        Args:
            url: SQLAlchemy URL (`sqlite:////abs/router.db`, `postgresql+psycopg://...`).
            busy_timeout: Seconds a statement waits for a lock (SQLite) or a connection before it gives up.
            retry_after: Seconds a client is told to wait after a store failure.
            pool_size: Connections kept by a server database's pool (one per worker thread); SQLite ignores it.
        """
        self.url = url
        self.busy_timeout = busy_timeout
        self.retry_after = retry_after
        self.pool_size = pool_size
        self.sqlite_synchronous: SqliteSynchronous = "full"
        """Set before `open`; server databases ignore it."""
        self.on_write: WriteObserver | None = None
        self._engine: Engine | None = None
        self._turns: WriteTurns | None = None
        """SQLite only: this process's writes queue for the file's one writer lock."""
        self._sqlite_begin = False
        """Whether a read opens its SQLite transaction itself (the driver starts none before a SELECT)."""

    @property
    def engine(self) -> Engine:
        """The open engine."""
        if self._engine is None:
            raise RuntimeError("Store.open() was not called")
        return self._engine

    def open(self) -> None:
        """Connect, create missing tables, columns and indexes (idempotent, safe beside other replicas)."""
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
                # A short busy timeout: a locked store answers 503 quickly instead of holding the client 30 s.
                connect_args={"check_same_thread": False, "timeout": self.busy_timeout},
                json_serializer=_json_text,
                # An in-memory database lives only as long as its one connection.
                **({"poolclass": StaticPool} if in_memory else {}),
            )
            sa.event.listen(engine, "connect", _sqlite_pragmas(self.sqlite_synchronous, self.busy_timeout))
            self._turns = WriteTurns()
            # Not on the one shared connection of an in-memory database: a write from another thread would land
            # in the read's transaction and be rolled back with it.
            self._sqlite_begin = not in_memory
        else:
            engine = sa.create_engine(
                url,
                pool_pre_ping=True,
                # Every store call runs in a worker thread and holds one connection: with one connection per
                # thread no request waits for the pool, and the connections a replica opens are bounded.
                pool_size=self.pool_size,
                max_overflow=0,
                pool_timeout=self.busy_timeout,
                connect_args={"connect_timeout": max(1, round(self.busy_timeout))},
                json_serializer=_json_text,
            )
        # Other replicas starting at the same time create the same tables between our check and our CREATE
        # ("already exists"); each attempt skips what exists by then. A store that stays locked is not retried past
        # two busy timeouts.
        deadline = time.monotonic() + 2 * self.busy_timeout
        for attempt in range(1, _CREATE_ATTEMPTS + 1):
            try:
                self._create(engine)
                break
            except sa.exc.DatabaseError:
                if attempt == _CREATE_ATTEMPTS or time.monotonic() >= deadline:
                    engine.dispose()
                    raise
                time.sleep(0.05 * attempt)
        self._engine = engine
        logger.info("inference store open at %s", url.render_as_string(hide_password=True))

    @staticmethod
    def _create(engine: Engine) -> None:
        metadata.create_all(engine)
        # A store written by an older router: add the nullable columns and the indexes it lacks.
        inspector = sa.inspect(engine)
        for table in metadata.sorted_tables:
            present = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present or not column.nullable:
                    continue
                kind = column.type.compile(dialect=engine.dialect)
                try:
                    with engine.begin() as conn:
                        conn.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
                    logger.info("store upgraded: added %s.%s", table.name, column.name)
                except sa.exc.DatabaseError as exc:
                    if not _created_meanwhile(exc):
                        raise  # e.g. locked: `open` tries again
            for index in table.indexes:
                try:
                    with engine.begin() as conn:
                        index.create(conn, checkfirst=True)
                except sa.exc.DatabaseError as exc:
                    if not _created_meanwhile(exc):
                        raise

    def close(self) -> None:
        """Dispose of the connection pool."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _unavailable(self, exc: Exception, what: str) -> StoreUnavailable:
        logger.error("store %s failed: %s: %s", what, type(exc).__name__, exc)
        return StoreUnavailable(
            f"the inference store could not {what} (busy, read-only or unreachable); retry in {self.retry_after} s",
            headers={"Retry-After": str(self.retry_after)},
        )

    @contextlib.contextmanager
    def begin(self, operation: str) -> Iterator[Connection]:
        """A transaction that commits on exit; store failures raise `StoreUnavailable`.

        Args:
            operation: Name of the write, for the store-latency metric and the log.
        """
        started = time.perf_counter()
        turns = self._turns
        if turns is not None and not turns.acquire(self.busy_timeout):
            waited = TimeoutError(f"no turn to write within {self.busy_timeout} s (this process's writes queued)")
            raise self._unavailable(waited, "write")
        try:  # nothing between the turn and this `try`: the turn is always given back
            with self.engine.begin() as conn:
                yield conn
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc, "write") from exc
        finally:
            if turns is not None:
                turns.release()
        if self.on_write is not None:
            self.on_write(operation, time.perf_counter() - started)

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        """A read-only connection whose statements all see one snapshot; store failures raise `StoreUnavailable`.

        A read of several statements (the outcome counts, then the users' sums behind them) must not see a write
        committed between two of them: on PostgreSQL the read runs in a REPEATABLE READ transaction, on SQLite in
        one explicit read transaction (WAL keeps its snapshot until it ends). Both end in a rollback.
        """
        try:
            with self.engine.connect() as conn:
                if self._sqlite_begin:
                    conn.exec_driver_sql("BEGIN")
                elif conn.dialect.name != "sqlite":
                    conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
                yield conn
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc, "read") from exc

    def heartbeat(self, replica_id: str) -> None:
        """Write this replica's heartbeat: proves that the store takes writes right now (GET /ready).

        Raises:
            StoreUnavailable: It did not.
        """
        now = datetime.now(UTC)
        with self.begin("heartbeat") as conn:
            updated = conn.execute(
                sa.update(heartbeats).where(heartbeats.c.replica_id == replica_id).values(seen_at=now)
            ).rowcount
            if not updated:
                conn.execute(sa.insert(heartbeats).values(replica_id=replica_id, seen_at=now))
