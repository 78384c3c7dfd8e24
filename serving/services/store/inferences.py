"""The inference log: predictions, their labels, failed predictions, and the per-arm outcome counts built from them."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import sqlalchemy as sa

from contracts.api import ArmOutcome, ConfusionCell, UserSums
from serving.errors import AlreadyLabelled, UnknownRequest
from serving.services.store.database import BulkInsert, Database
from serving.services.store.tables import (
    InferenceRow,
    LatencyBucketRow,
    PredictionErrorRow,
    inferences,
    prediction_errors,
    row_of,
)

_MAX_ERROR_CHARS = 4000


def _aware(moment: datetime | str | None) -> datetime | None:
    """A timestamp read through an aggregate (which bypasses the column type): aware UTC."""
    if moment is None:
        return None
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


class InferenceLog:
    """Blocking reads and writes of the inference log: call from a worker thread, not the event loop."""

    def __init__(self, db: Database) -> None:
        """Work on an open (or soon opened) database."""
        self.db = db
        self._insert = BulkInsert(inferences)

    def record(self, row: InferenceRow) -> InferenceRow:
        """Insert one prediction and commit before returning.

        Args:
            row: The prediction to log.

        Returns:
            `row`, or, when its idempotency key was already taken (a concurrent retry), the row that took it.
        """
        try:
            with self.db.begin("record") as conn:
                conn.execute(sa.insert(inferences).values(**row.__dict__))
        except sa.exc.IntegrityError:
            first = self.by_key(row.idempotency_key) if row.idempotency_key else None
            if first is None:
                raise
            return first
        return row

    def record_many(self, rows: list[InferenceRow]) -> list[InferenceRow]:
        """Insert many predictions in one transaction (one commit for all: a group commit) before returning.

        Args:
            rows: The predictions to log, e.g. one micro-batch.

        Returns:
            For each row, the row itself, or, when its idempotency key was already taken (a concurrent retry),
            the row that took it. When a key collides, the rows are inserted one by one instead (`record`).
        """
        if not rows:
            return []
        try:
            with self.db.begin("record") as conn:  # one write of the log, whatever its size
                self._insert.execute(conn, rows)
        except sa.exc.IntegrityError:
            if not any(row.idempotency_key for row in rows):
                raise
            return [self.record(row) for row in rows]
        return list(rows)

    def get(self, request_id: str) -> InferenceRow | None:
        """One logged prediction by id, or None."""
        with self.db.connect() as conn:
            found = conn.execute(sa.select(inferences).where(inferences.c.request_id == request_id)).first()
        return row_of(InferenceRow, inferences, found._mapping) if found else None

    def by_key(self, key: str) -> InferenceRow | None:
        """The prediction logged under an idempotency key, or None."""
        with self.db.connect() as conn:
            found = conn.execute(sa.select(inferences).where(inferences.c.idempotency_key == key)).first()
        return row_of(InferenceRow, inferences, found._mapping) if found else None

    def set_label(self, request_id: str, label: str) -> tuple[InferenceRow, bool]:
        """Attach a label to a logged prediction; labels are write-once, and writing the same one again is a no-op.

        Args:
            request_id: The prediction to label.
            label: The true label, as a string.

        Returns:
            The labelled prediction, and whether this call labelled it (False for a repeat of the same label).

        Raises:
            UnknownRequest: No prediction has this id.
            AlreadyLabelled: The prediction already has another label.
        """
        c = inferences.c
        with self.db.begin("label") as conn:
            # The `label IS NULL` guard makes check-and-set one atomic statement, even across replicas.
            updated = conn.execute(
                sa.update(inferences).where(c.request_id == request_id, c.label.is_(None)).values(label=label)
            ).rowcount
            found = conn.execute(sa.select(inferences).where(c.request_id == request_id)).first()
        if found is None:
            raise UnknownRequest(f"unknown request_id {request_id!r}: no prediction with this id was logged")
        row: InferenceRow = row_of(InferenceRow, inferences, found._mapping)
        if updated != 1 and row.label != label:
            raise AlreadyLabelled(
                f"request {request_id!r} already has label {row.label!r}; labels are write-once",
                extra={"request_id": request_id, "label": row.label, "rejected_label": label},
            )
        return row, updated == 1

    def recent(
        self,
        *,
        limit: int = 500,
        since: datetime | None = None,
        labelled: bool | None = None,
        before: tuple[datetime, str] | None = None,
    ) -> list[InferenceRow]:
        """The newest logged predictions, newest first.

        Args:
            limit: At most this many rows.
            since: Only rows with `ts >= since` (naive means UTC).
            labelled: True: only labelled rows; False: only unlabelled; None: both.
            before: Only rows after this (ts, request_id) in the log's order: the next page of a walk (keyset
                pagination on the `ts` index, so a deep page costs what the first does).

        Returns:
            The rows, newest first.
        """
        c = inferences.c
        stmt = sa.select(inferences).order_by(c.ts.desc(), c.request_id.desc()).limit(limit)
        if since is not None:
            stmt = stmt.where(c.ts >= since)
        if before is not None:
            ts, request_id = before
            stmt = stmt.where(sa.or_(c.ts < ts, sa.and_(c.ts == ts, c.request_id < request_id)))
        if labelled is not None:
            stmt = stmt.where(c.label.is_not(None) if labelled else c.label.is_(None))
        with self.db.connect() as conn:
            return [row_of(InferenceRow, inferences, r._mapping) for r in conn.execute(stmt)]

    def record_error(self, row: PredictionErrorRow) -> None:
        """Insert one failed prediction and commit before returning; a retry under the same key is not counted twice.

        Args:
            row: The failed request; its error text is cut to a few thousand characters.
        """
        values = {**row.__dict__, "error": row.error[:_MAX_ERROR_CHARS]}
        try:
            with self.db.begin("record_error") as conn:
                conn.execute(sa.insert(prediction_errors).values(**values))
        except sa.exc.IntegrityError:
            if row.idempotency_key is None:
                raise

    def outcomes(self, experiment_id: str) -> dict[str, ArmOutcome]:
        """Per-arm counts, errors, distinct users, latency percentiles and confusion cells of one experiment.

        Counts and confusion cells are aggregated in SQL; the percentiles are numpy's (linear interpolation)
        over the experiment's latencies, since SQLite has no percentile function.

        Args:
            experiment_id: e.g. `v3` or `v3-vs-v4`.

        Returns:
            Arm name to its outcome (the version that served it, read from its records), for the arms that
            answered or failed at least one request.
        """
        c, e = inferences.c, prediction_errors.c
        labelled = c.label.is_not(None)

        def count_if(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
            return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

        counts = (
            sa.select(
                c.arm,
                sa.func.max(c.model_version).label("model_version"),
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
            sa.select(e.arm, sa.func.max(e.model_version).label("model_version"), sa.func.count().label("errors"))
            .where(e.experiment_id == experiment_id)
            .group_by(e.arm)
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
        # Per user: n = labelled answered + failed requests, x = correct ones (a failure is a certain miss), then
        # per arm the sums a cluster-robust variance of sum(x) / sum(n) needs.
        scored = sa.union_all(
            sa.select(
                c.arm.label("arm"),
                c.user_id.label("user_id"),
                sa.literal(1).label("n"),
                sa.case((c.label == c.prediction, 1), else_=0).label("x"),
            ).where(c.experiment_id == experiment_id, labelled),
            sa.select(e.arm, e.user_id, sa.literal(1), sa.literal(0)).where(e.experiment_id == experiment_id),
        ).subquery()
        per_user = (
            sa.select(scored.c.arm, sa.func.sum(scored.c.n).label("n"), sa.func.sum(scored.c.x).label("x"))
            .group_by(scored.c.arm, scored.c.user_id)
            .subquery()
        )
        u = per_user.c
        user_sums = sa.select(
            u.arm,
            sa.func.count().label("users"),
            sa.func.sum(u.n).label("sn"),
            sa.func.sum(u.x).label("sx"),
            sa.func.sum(u.n * u.n).label("snn"),
            sa.func.sum(u.x * u.x).label("sxx"),
            sa.func.sum(u.n * u.x).label("snx"),
        ).group_by(u.arm)
        spans = sa.union_all(
            sa.select(c.arm.label("arm"), c.ts.label("ts")).where(c.experiment_id == experiment_id),
            sa.select(e.arm, e.ts).where(e.experiment_id == experiment_id),
        ).subquery()
        span = sa.select(
            spans.c.arm, sa.func.min(spans.c.ts).label("first"), sa.func.max(spans.c.ts).label("last")
        ).group_by(spans.c.arm)
        latencies = sa.select(c.arm, c.latency_ms).where(c.experiment_id == experiment_id)
        confusion = (
            sa.select(c.arm, c.label, c.prediction, sa.func.count().label("n"))
            .where(c.experiment_id == experiment_id, labelled)
            .group_by(c.arm, c.label, c.prediction)
            .order_by(c.arm, c.label, c.prediction)
        )
        with self.db.connect() as conn:
            count_rows = {r.arm: r for r in conn.execute(counts)}
            error_rows = {r.arm: r for r in conn.execute(errors)}
            user_counts = {r.arm: int(r.users) for r in conn.execute(users)}
            sums = {
                r.arm: UserSums(
                    users=int(r.users),
                    sum_n=int(r.sn),
                    sum_x=int(r.sx),
                    sum_nn=int(r.snn),
                    sum_xx=int(r.sxx),
                    sum_nx=int(r.snx),
                )
                for r in conn.execute(user_sums)
            }
            times = {r.arm: (_aware(r.first), _aware(r.last)) for r in conn.execute(span)}
            by_arm: dict[str, list[float]] = {}
            for r in conn.execute(latencies):
                by_arm.setdefault(r.arm, []).append(float(r.latency_ms))
            cells: dict[str, list[ConfusionCell]] = {}
            for r in conn.execute(confusion):
                cell = ConfusionCell(label=r.label, prediction=r.prediction, count=int(r.n))
                cells.setdefault(r.arm, []).append(cell)
        result: dict[str, ArmOutcome] = {}
        for arm in sorted(count_rows.keys() | error_rows.keys()):
            r, failed = count_rows.get(arm), error_rows.get(arm)
            result[arm] = ArmOutcome(
                arm=arm,
                model_version=(r or failed).model_version,
                requests=int(r.requests) if r else 0,
                labelled=int(r.labelled) if r else 0,
                correct=int(r.correct) if r else 0,
                incorrect=int(r.incorrect) if r else 0,
                errors=int(failed.errors) if failed else 0,
                users=user_counts.get(arm, 0),
                labelled_users=int(r.labelled_users) if r else 0,
                latency_p50_ms=_percentile(by_arm.get(arm, []), 50),
                latency_p95_ms=_percentile(by_arm.get(arm, []), 95),
                confusion=cells.get(arm, []),
                user_sums=sums.get(arm),
                first_request_at=times.get(arm, (None, None))[0],
                last_request_at=times.get(arm, (None, None))[1],
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
        with self.db.connect() as conn:
            for r in conn.execute(stmt):
                key = (int(r.ts.timestamp()) // bucket_seconds, r.arm)
                latencies, computes = groups.setdefault(key, ([], []))
                latencies.append(float(r.latency_ms))
                if r.compute_ms is not None:
                    computes.append(float(r.compute_ms))
        return [
            LatencyBucketRow(
                start=datetime.fromtimestamp(index * bucket_seconds, UTC),
                arm=arm,  # type: ignore[arg-type]
                requests=len(latencies),
                latency_p95_ms=float(np.percentile(latencies, 95)),
                compute_ms_median=float(np.median(computes)) if computes else None,
            )
            for (index, arm), (latencies, computes) in sorted(groups.items())
        ]

    def errors_per_arm(self, experiment_id: str) -> dict[str, tuple[int, int]]:
        """(assigned, failed) requests per arm of one experiment: answered plus failed, and failed alone."""
        c, e = inferences.c, prediction_errors.c
        answered = sa.select(c.arm, sa.func.count().label("n")).where(c.experiment_id == experiment_id).group_by(c.arm)
        failed = sa.select(e.arm, sa.func.count().label("n")).where(e.experiment_id == experiment_id).group_by(e.arm)
        with self.db.connect() as conn:
            ok = {r.arm: int(r.n) for r in conn.execute(answered)}
            bad = {r.arm: int(r.n) for r in conn.execute(failed)}
        return {arm: (ok.get(arm, 0) + bad.get(arm, 0), bad.get(arm, 0)) for arm in ok.keys() | bad.keys()}

    def labelled_per_arm(self, experiment_id: str) -> dict[str, int]:
        """Labelled requests per arm of one experiment (the cheap part of `outcomes`, for the refresh loop)."""
        c = inferences.c
        stmt = (
            sa.select(c.arm, sa.func.count(c.label).label("labelled"))
            .where(c.experiment_id == experiment_id)
            .group_by(c.arm)
        )
        with self.db.connect() as conn:
            return {r.arm: int(r.labelled) for r in conn.execute(stmt)}

    def count_since(self, since: datetime) -> int:
        """Requests logged at or after `since` (answered ones; the heartbeat of the traffic silence alert)."""
        c = inferences.c
        with self.db.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).where(c.ts >= since)).scalar_one())
