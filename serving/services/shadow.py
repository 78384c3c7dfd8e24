"""Shadow mode: the challenger also scores champion requests, off the request path; logged, never served."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from contracts.api import ShadowOutcome
from serving.errors import Overloaded
from serving.metrics import RouterMetrics
from serving.services.batching import MicroBatcher
from serving.services.models import ModelManager
from serving.services.store import InferenceRow, ShadowRow, Store

logger = logging.getLogger(__name__)

ShadowItem = tuple[InferenceRow, dict[str, Any]]
"""A champion request's committed record and its checked features."""


class ShadowScorer:
    """Takes the champion's committed records (from the predict worker), scores them with the challenger in
    batches of its own, and logs the results; a full queue drops work (counted) rather than slow the answers."""

    def __init__(
        self,
        *,
        store: Store,
        models: ModelManager,
        metrics: RouterMetrics,
        max_queue: int,
        max_batch: int = 256,
        window_seconds: float = 0.05,
    ) -> None:
        """Wire the scorer; `start` it on the event loop.

        Args:
            store: Where the shadow predictions go.
            models: The challenger serving now.
            metrics: Counts of recorded, dropped and failed shadow predictions.
            max_queue: Most records waiting; more are dropped (counted).
            max_batch: Most records scored in one batch.
            window_seconds: How long records gather before they are scored: nobody waits for a shadow prediction,
                so the scorer takes many group commits' worth at once, one predict call and one commit for all
                (at a few thousand requests a second, one every 50 ms instead of one per group commit).
        """
        self.store = store
        self.models = models
        self.metrics = metrics
        self.batcher: MicroBatcher[ShadowItem, None] = MicroBatcher(
            self.process,
            window_seconds=window_seconds,
            quiet_seconds=window_seconds,
            burst_memory=0,
            max_batch=max_batch,
            max_queue=max_queue,
            name="shadow",
        )
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start taking records (on the running loop)."""
        self._loop = asyncio.get_running_loop()
        self.batcher.start()

    async def close(self) -> None:
        """Score what is queued, then stop."""
        await self.batcher.close()
        self._loop = None

    def offer(self, items: list[ShadowItem]) -> None:
        """Hand over champion records from any thread; never blocks."""
        loop = self._loop
        if loop is None or not items:
            return
        loop.call_soon_threadsafe(self._enqueue, items)

    def _enqueue(self, items: list[ShadowItem]) -> None:
        try:
            self.batcher.submit(items)
        except Overloaded:
            self.metrics.shadow.labels("dropped").inc(len(items))

    def process(self, items: list[ShadowItem]) -> list[None]:
        """Score a batch with the challenger serving now and log it (blocking; never raises)."""
        try:
            self._score(items)
        except Exception:
            logger.exception("shadow scoring of %d requests failed", len(items))
            self.metrics.shadow.labels("failed").inc(len(items))
        return [None] * len(items)

    def _score(self, items: list[ShadowItem]) -> None:
        current = self.models.current
        challenger = current.challenger
        # Only records of the experiment still being served: after a swap, their challenger is gone.
        items = [(r, row) for r, row in items if challenger is not None and r.experiment_id == current.experiment_id]
        if challenger is None or not items:
            return
        predictions = challenger.predict_many([challenger.check(row) for _, row in items])
        rows = [
            ShadowRow(
                request_id=record.request_id,
                ts=record.ts,
                experiment_id=record.experiment_id,
                model_version=challenger.version,
                prediction=str(prediction),
                champion_prediction=record.prediction,
            )
            for (record, _), prediction in zip(items, predictions, strict=True)
        ]
        self.store.shadow.record_many(rows)
        self.metrics.shadow.labels("recorded").inc(len(rows))

    def outcome(self, experiment_id: str) -> ShadowOutcome | None:
        """The shadow counts of one experiment's current challenger (None when it has none)."""
        counts = self.store.shadow.counts(experiment_id)
        if not counts:
            return None
        c = counts[-1]
        return ShadowOutcome(
            model_version=c.model_version, requests=c.requests, agree=c.agree, labelled=c.labelled, correct=c.correct
        )
