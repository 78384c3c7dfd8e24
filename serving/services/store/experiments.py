"""Stored experiments (champion/challenger pairs): start, plan, sample reached, end, shared by replicas."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from serving.errors import ExperimentConflict
from serving.services.store.database import Database
from serving.services.store.outbox import NewEvent, enqueue
from serving.services.store.tables import ExperimentRow, experiments, row_of


def _when(moment: datetime | None) -> str:
    return "?" if moment is None else f"{moment:%Y-%m-%dT%H:%M:%SZ}"


def _set_once(conn: sa.Connection, experiment_id: str, unset: sa.Column[Any], **values: Any) -> bool:
    """Set `values` only while `unset` is NULL, so the first writer of any replica wins; whether this call did."""
    stmt = sa.update(experiments).where(experiments.c.experiment_id == experiment_id, unset.is_(None))
    return conn.execute(stmt.values(**values)).rowcount == 1


class ExperimentRecords:
    """Blocking reads and conditional writes of the experiments table: call from a worker thread."""

    def __init__(self, db: Database) -> None:
        """Work on an open (or soon opened) database."""
        self.db = db

    def get(self, experiment_id: str) -> ExperimentRow | None:
        """One stored experiment, or None."""
        with self.db.connect() as conn:
            found = conn.execute(sa.select(experiments).where(experiments.c.experiment_id == experiment_id)).first()
        return row_of(ExperimentRow, experiments, found._mapping) if found else None

    def _must_get(self, experiment_id: str) -> ExperimentRow:
        row = self.get(experiment_id)
        assert row is not None, experiment_id
        return row

    def latest_started(self) -> ExperimentRow | None:
        """The experiment the router started serving last, or None when none ever started."""
        x = experiments.c
        stmt = (
            sa.select(experiments)
            .where(x.started_at.is_not(None))
            .order_by(x.started_at.desc(), x.experiment_id.desc())
            .limit(1)
        )
        with self.db.connect() as conn:
            found = conn.execute(stmt).first()
        return row_of(ExperimentRow, experiments, found._mapping) if found else None

    def _ensure(self, experiment_id: str, **values: Any) -> bool:
        """Insert the experiment with a fresh secret salt unless it exists; returns whether this call inserted it."""
        if self.get(experiment_id) is not None:
            return False
        try:
            with self.db.begin("experiment_insert") as conn:
                conn.execute(
                    sa.insert(experiments).values(experiment_id=experiment_id, salt=secrets.token_hex(16), **values)
                )
        except sa.exc.IntegrityError:
            return False  # another replica inserted it first
        return True

    def mark_started(
        self,
        *,
        model_name: str,
        experiment_id: str,
        champion_version: str,
        challenger_version: str,
        at: datetime,
        plan: dict[str, Any] | None = None,
    ) -> ExperimentRow:
        """Record when the router first served an experiment; later calls (and other replicas) keep the first time.

        Args:
            model_name: Registered model name.
            experiment_id: `v{champion}-vs-v{challenger}`.
            champion_version: Champion of the pair.
            challenger_version: Challenger of the pair.
            at: When the pair was first seen.
            plan: The plan from the registry's tags, stored when the experiment has none yet.

        Returns:
            The stored experiment.
        """
        x = experiments.c
        row = self.get(experiment_id)
        if row is not None and row.started_at is not None and (row.plan is not None or plan is None):
            return row
        inserted = row is None and self._ensure(
            experiment_id,
            model_name=model_name,
            champion_version=champion_version,
            challenger_version=challenger_version,
            started_at=at,
            plan=plan,
        )
        if not inserted:
            # A plan came first (or another replica raced us): set the start and the plan only where none is set.
            with self.db.begin("experiment_start") as conn:
                _set_once(conn, experiment_id, x.started_at, started_at=at)
                if plan is not None:
                    _set_once(conn, experiment_id, x.plan, plan=plan)
        return self._must_get(experiment_id)

    def save_plan(
        self,
        *,
        model_name: str,
        experiment_id: str,
        champion_version: str,
        challenger_version: str,
        plan: dict[str, Any],
    ) -> ExperimentRow:
        """Store the plan of an experiment before it starts; the same plan again is a no-op.

        Args:
            model_name: Registered model name.
            experiment_id: `v{champion}-vs-v{challenger}`.
            champion_version: Champion of the pair.
            challenger_version: Challenger of the pair.
            plan: The `ExperimentPlan` as JSON.

        Returns:
            The stored experiment.

        Raises:
            ExperimentConflict: Another plan is stored and the experiment has started (its first users were
                assigned under it), or the experiment has ended.
        """
        x = experiments.c
        if self._ensure(
            experiment_id,
            model_name=model_name,
            champion_version=champion_version,
            challenger_version=challenger_version,
            plan=plan,
        ):
            return self._must_get(experiment_id)
        # Replace only while nothing fixed it: not ended, and not started under another plan.
        editable = sa.and_(x.ended_at.is_(None), sa.or_(x.started_at.is_(None), x.plan.is_(None)))
        with self.db.begin("experiment_plan") as conn:
            current = conn.execute(sa.select(experiments).where(x.experiment_id == experiment_id)).first()
            assert current is not None
            row: ExperimentRow = row_of(ExperimentRow, experiments, current._mapping)
            if row.plan == plan and row.ended_at is None:
                return row
            updated = conn.execute(
                sa.update(experiments).where(x.experiment_id == experiment_id, editable).values(plan=plan)
            ).rowcount
        if updated == 1:
            return self._must_get(experiment_id)
        row = self._must_get(experiment_id)
        if row.ended_at is not None:
            raise ExperimentConflict(
                f"experiment {experiment_id} ended at {_when(row.ended_at)} ({row.end_decision}); "
                "its plan can no longer change",
                extra={"experiment_id": experiment_id, "ended_at": _when(row.ended_at)},
            )
        raise ExperimentConflict(
            f"experiment {experiment_id} started at {_when(row.started_at)} under another plan; a plan is fixed "
            "once the first users are assigned (register a new challenger to test another plan)",
            extra={"experiment_id": experiment_id, "started_at": _when(row.started_at)},
        )

    def replace_plan(self, experiment_id: str, plan: dict[str, Any]) -> None:
        """Overwrite the stored plan with the registry's (the source of truth), whatever the state."""
        with self.db.begin("experiment_plan") as conn:
            conn.execute(sa.update(experiments).where(experiments.c.experiment_id == experiment_id).values(plan=plan))

    def claim_sample_reached(self, experiment_id: str, at: datetime, event: NewEvent) -> bool:
        """Set `sample_reached_at` and queue its event in one transaction, unless set already.

        Returns:
            True only for the one call (of any replica) that set it; that call's event is in the outbox.
        """
        with self.db.begin("sample_reached") as conn:
            if not _set_once(conn, experiment_id, experiments.c.sample_reached_at, sample_reached_at=at):
                return False
            enqueue(conn, event, at)
        return True

    def end(
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
        self._ensure(
            experiment_id,
            model_name=model_name,
            champion_version=champion_version,
            challenger_version=challenger_version,
        )
        with self.db.begin("experiment_end") as conn:
            ending = {"ended_at": at, "end_decision": decision, "end_reason": reason}
            _set_once(conn, experiment_id, experiments.c.ended_at, **ending)
        row = self._must_get(experiment_id)
        if row.end_decision != decision:
            raise ExperimentConflict(
                f"experiment {experiment_id} already ended with {row.end_decision}: {row.end_reason}",
                extra={"experiment_id": experiment_id, "decision": row.end_decision, "rejected_decision": decision},
            )
        return row

    def assignment(
        self, *, model_name: str, experiment_id: str, champion_version: str, challenger_version: str
    ) -> ExperimentRow:
        """The stored experiment, inserted (with its fresh secret salt) when the router serves it before recording it.

        The salt is drawn once, at the insert: every replica then reads the same one. An experiment stored by an older
        router has none and keeps the settings' salt its users were assigned under.
        """
        row = self.get(experiment_id)
        if row is not None:
            return row
        self._ensure(
            experiment_id,
            model_name=model_name,
            champion_version=champion_version,
            challenger_version=challenger_version,
        )
        return self._must_get(experiment_id)

    def pause(self, experiment_id: str, *, reason: str, at: datetime) -> ExperimentRow:
        """Pause a running experiment (the champion serves everyone); pausing a paused one keeps the first pause.

        Raises:
            ExperimentConflict: It ended.
        """
        x = experiments.c
        with self.db.begin("experiment_pause") as conn:
            conn.execute(
                sa.update(experiments)
                .where(x.experiment_id == experiment_id, x.ended_at.is_(None), x.paused_at.is_(None))
                .values(paused_at=at, pause_reason=reason)
            )
        row = self._must_get(experiment_id)
        if row.ended_at is not None:
            raise ExperimentConflict(
                f"experiment {experiment_id} ended at {_when(row.ended_at)} ({row.end_decision}); it cannot be paused",
                extra={"experiment_id": experiment_id},
            )
        return row

    def resume(self, experiment_id: str, *, at: datetime) -> ExperimentRow:
        """Resume a paused experiment (a running one is left as it is).

        Raises:
            ExperimentConflict: It ended.
        """
        x = experiments.c
        with self.db.begin("experiment_resume") as conn:
            conn.execute(
                sa.update(experiments)
                .where(x.experiment_id == experiment_id, x.ended_at.is_(None), x.paused_at.is_not(None))
                .values(paused_at=None, pause_reason=None, resumed_at=at)
            )
        row = self._must_get(experiment_id)
        if row.ended_at is not None:
            raise ExperimentConflict(
                f"experiment {experiment_id} ended at {_when(row.ended_at)} ({row.end_decision}); it cannot be resumed",
                extra={"experiment_id": experiment_id},
            )
        return row
