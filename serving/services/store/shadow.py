"""The shadow log: the challenger's predictions for champion requests (shadow mode), and their counts."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from serving.services.store.database import BulkInsert, Database
from serving.services.store.tables import ShadowRow, inferences, shadow_inferences


@dataclass(frozen=True, kw_only=True)
class ShadowCounts:
    """Shadow predictions of one challenger version within one experiment."""

    model_version: str
    requests: int
    agree: int
    labelled: int
    correct: int


class ShadowLog:
    """Blocking writes and reads of the shadow log: call from a worker thread, not the event loop."""

    def __init__(self, db: Database) -> None:
        """Work on an open (or soon opened) database."""
        self.db = db
        self._insert = BulkInsert(shadow_inferences)

    def record_many(self, rows: list[ShadowRow]) -> None:
        """Insert shadow predictions in one transaction (a repeat of a request id is ignored)."""
        if not rows:
            return
        try:
            with self.db.begin("shadow") as conn:
                self._insert.execute(conn, rows)
        except sa.exc.IntegrityError:
            for row in rows:  # rare: one of them was recorded already
                try:
                    with self.db.begin("shadow") as conn:
                        conn.execute(sa.insert(shadow_inferences).values(**row.__dict__))
                except sa.exc.IntegrityError:
                    pass

    def counts(self, experiment_id: str) -> list[ShadowCounts]:
        """Per challenger version of one experiment: shadow predictions, agreement with the champion, and how the
        labelled ones did (labels are the champion requests' own)."""
        s, c = shadow_inferences.c, inferences.c

        def count_if(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
            return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

        stmt = (
            sa.select(
                s.model_version,
                sa.func.count().label("requests"),
                count_if(s.prediction == s.champion_prediction).label("agree"),
                sa.func.count(c.label).label("labelled"),
                count_if(sa.and_(c.label.is_not(None), c.label == s.prediction)).label("correct"),
            )
            .select_from(shadow_inferences.outerjoin(inferences, c.request_id == s.request_id))
            .where(s.experiment_id == experiment_id)
            .group_by(s.model_version)
            .order_by(s.model_version)
        )
        with self.db.connect() as conn:
            return [
                ShadowCounts(
                    model_version=r.model_version,
                    requests=int(r.requests),
                    agree=int(r.agree),
                    labelled=int(r.labelled),
                    correct=int(r.correct),
                )
                for r in conn.execute(stmt)
            ]
