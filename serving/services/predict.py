"""The prediction path: requests in, answers out (assign, check, predict, record in one commit), once per key."""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from contracts.api import Arm, Label, PredictRequest, PredictResponse
from contracts.registry import CHAMPION
from serving.errors import IdempotencyConflict, PredictionFailed, RouterError, redact
from serving.metrics import RouterMetrics
from serving.security import Authorizer
from serving.services import views
from serving.services.arm_state import ArmStates
from serving.services.assignment import assign_arm
from serving.services.batching import MicroBatcher
from serving.services.models import ModelManager, ServedModel
from serving.services.split import SplitCache
from serving.services.store import InferenceRow, PredictionErrorRow, Store, new_request_id

logger = logging.getLogger(__name__)


def fingerprint(data: PredictRequest) -> str:
    """A digest of what a request asks (user, features, label): a key reused for another request is refused."""
    canonical = json.dumps(
        {"user_id": str(data.user_id), "features": data.features, "label": data.label},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class PendingPrediction:
    """A request that passed the checks the event loop makes, waiting for its batch.

    Attributes:
        data: The request body.
        key: Its idempotency key, if any.
        digest: Its fingerprint (with a key only).
        arrived: `time.perf_counter()` when the request arrived: its latency includes the queueing.
    """

    data: PredictRequest
    key: str | None
    digest: str | None
    arrived: float


@dataclass(slots=True)
class _Assigned:
    index: int
    arm: Arm
    served: ServedModel
    row: dict[str, Any]
    label: str | None


Outcome = PredictResponse | Exception


@dataclass(slots=True)
class PredictedBatch:
    """A batch between its predictions and its commit: what is known of each item so far."""

    items: list[PendingPrediction]
    out: list[Outcome | None]
    """Outcomes already known (errors, replays); None for the rest."""
    records: list[tuple[int, InferenceRow, Label, dict[str, Any]]] = field(default_factory=list)
    """(item index, record to write, native prediction, checked features)."""
    duplicates: list[tuple[int, int]] = field(default_factory=list)
    """(item index, index of the earlier item with the same key)."""


@dataclass(frozen=True, slots=True)
class PredictQueue:
    """The `/predict` path as the handlers see it: the event loop's checks, then the micro-batcher's answer.

    One dependency rather than two: Litestar resolves a handler's independent dependencies in a task group of their
    own on every request.

    Attributes:
        predictor: Checks requests (`prepare`) and answers batches of them.
        batcher: Gathers checked requests into the predictor's batches.
    """

    predictor: PredictService
    batcher: MicroBatcher[PendingPrediction, PredictResponse]

    async def run(
        self,
        data: PredictRequest,
        *,
        idempotency_key: str | None = None,
        authorization: str | None = None,
        arrived: float | None = None,
    ) -> PredictResponse:
        """Check one request, queue it, and wait for its answer (see `PredictService.prepare`, `MicroBatcher.run`).

        Raises:
            RouterError: The request's own error (4xx, 500, 503 when the queue is full).
        """
        pending = self.predictor.prepare(
            data, idempotency_key=idempotency_key, authorization=authorization, arrived=arrived
        )
        return await self.batcher.run(pending)


class PredictService:
    """Answers `/predict`: requests in, responses out, each committed to the log before it is answered.

    `prepare` runs on the event loop (cheap checks only); `process` is blocking and handles a whole micro-batch:
    one predict call per arm and one group commit for all the batch's records.
    """

    def __init__(
        self,
        *,
        store: Store,
        models: ModelManager,
        authorizer: Authorizer,
        metrics: RouterMetrics,
        salt: str,
        split: SplitCache,
        max_abs_feature: float,
        fresh_salt: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """Wire the service.

        Args:
            store: The inference log.
            models: The champion/challenger being served.
            authorizer: Checks the label token of inline labels.
            metrics: Where counts and latencies go.
            salt: Salt of the user hash (without `fresh_salt`, and for experiments stored without one).
            split: The split in force (cached).
            max_abs_feature: Largest magnitude of a numeric feature.
            fresh_salt: Use each experiment's own secret salt from the store.
            clock: Current UTC time.
        """
        self.store = store
        self.models = models
        self.authorizer = authorizer
        self.metrics = metrics
        self.arm_states = ArmStates(store, default_salt=salt, fresh_salt=fresh_salt)
        self.split_cache = split
        self.max_abs_feature = max_abs_feature
        self.clock = clock
        self.on_recorded: Callable[[list[tuple[InferenceRow, dict[str, Any]]]], None] | None = None
        """Told the champion's (record, checked features) pairs of every group commit (shadow mode)."""

    def split(self) -> float:
        """The split in force (cached; see `SplitCache`)."""
        return self.split_cache.get()

    def prepare(
        self,
        data: PredictRequest,
        *,
        idempotency_key: str | None = None,
        authorization: str | None = None,
        arrived: float | None = None,
    ) -> PendingPrediction:
        """The checks that need neither the store nor a model (cheap: run on the event loop).

        Raises:
            RouterError: 400 for conflicting keys, 401/403 for an inline label without the label token.
        """
        key = self._key(data, idempotency_key)
        if data.label is not None:
            self.authorizer.check("label", authorization)
        return PendingPrediction(
            data=data,
            key=key,
            digest=fingerprint(data) if key else None,
            arrived=time.perf_counter() if arrived is None else arrived,
        )

    def predict(
        self, data: PredictRequest, *, idempotency_key: str | None = None, authorization: str | None = None
    ) -> PredictResponse:
        """One request without a batcher (blocking): `prepare`, then `process` a batch of one.

        Raises:
            RouterError: 4xx for a bad request (nothing is recorded), 503 without a champion or a store.
        """
        [outcome] = self.process([self.prepare(data, idempotency_key=idempotency_key, authorization=authorization)])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def process(self, items: list[PendingPrediction]) -> list[Outcome]:
        """Answer a micro-batch: assign, check, predict (one call per arm), log (one commit), answer. Blocking.

        Args:
            items: The batch's requests, in arrival order.

        Returns:
            One outcome per item: its answer (for a key seen before, the first answer, not counted again), or its
            own error (4xx for a bad request, 500 for a model failure, 503 without a champion or a store).
        """
        return self.commit(self.predict_batch(items))

    def predict_batch(self, items: list[PendingPrediction]) -> PredictedBatch:
        """The first stage of `process`: assign, check and predict (one call per arm), nothing written. Blocking.

        A batcher may run this for the next batch while `commit` writes the previous one.
        """
        out: list[Outcome | None] = [None] * len(items)
        try:
            # One snapshot for the whole batch: a concurrent swap cannot mix versions within it.
            current = self.models.current
            current.require_champion()
            # The experiment's own secret salt; a paused experiment sends everyone to the champion, logged apart.
            state = self.arm_states.of(current)
            split_b = self.split() if current.challenger and not state.paused else 0.0
        except RouterError as exc:
            return PredictedBatch(items=items, out=[exc] * len(items))
        experiment_id = state.experiment_id
        first_with_key: dict[str, int] = {}
        duplicates: list[tuple[int, int]] = []
        assigned: dict[Arm, list[_Assigned]] = {}
        for i, item in enumerate(items):
            data = item.data
            try:
                if item.key is not None:
                    if item.key in first_with_key:  # the same key twice in one batch: the first one answers both
                        duplicates.append((i, first_with_key[item.key]))
                        continue
                    if (first := self.store.log.by_key(item.key)) is not None:
                        out[i] = self._replay(first, item.digest, item.key)
                        continue
                    first_with_key[item.key] = i
                arm: Arm = assign_arm(
                    str(data.user_id), salt=state.salt, split_b=split_b, has_challenger=current.challenger is not None
                )
                served = current.for_arm(arm)
                assert served is not None
                row = served.check(data.features, max_abs=self.max_abs_feature)
                label = None if data.label is None else served.check_label(data.label)
            except RouterError as exc:
                out[i] = exc
                continue
            assigned.setdefault(arm, []).append(_Assigned(i, arm, served, row, label))
        records: list[tuple[int, InferenceRow, Label, dict[str, Any]]] = []
        for arm, entries in assigned.items():
            for entry, prediction, compute_ms in self._predict_arm(entries, items, experiment_id, out):
                item = items[entry.index]
                record = InferenceRow(
                    request_id=new_request_id(),
                    ts=self.clock(),
                    user_id=str(item.data.user_id),
                    arm=arm,
                    model_name=entry.served.name,
                    model_version=entry.served.version,
                    experiment_id=experiment_id,
                    features=entry.row,
                    prediction=str(prediction),
                    label=entry.label,
                    latency_ms=(time.perf_counter() - item.arrived) * 1000,
                    compute_ms=compute_ms,
                    idempotency_key=item.key,
                    fingerprint=item.digest,
                )
                records.append((entry.index, record, prediction, entry.row))
        return PredictedBatch(items=items, out=out, records=records, duplicates=duplicates)

    def commit(self, batch: PredictedBatch) -> list[Outcome]:
        """The second stage of `process`: one group commit of the batch's records, then each item's outcome.

        Blocking; one commit at a time (the store has one writer).
        """
        items, out, records, duplicates = batch.items, batch.out, batch.records, batch.duplicates
        logged: dict[int, InferenceRow] = {}
        if records:
            try:
                stored_rows = self.store.log.record_many([r for _, r, _, _ in records])
            except RouterError as exc:
                for i, *_ in records:
                    out[i] = exc
                stored_rows = []
            now = time.perf_counter()
            metrics = self.metrics
            # Counted per batch, one increment per distinct label set: the counts stay exact.
            counts: collections.Counter[tuple[Any, ...]] = collections.Counter()
            for (i, record, prediction, _), stored in zip(records, stored_rows, strict=False):
                logged[i] = stored
                if stored.request_id != record.request_id:
                    # A concurrent retry with the same key (another replica) got there first.
                    out[i] = self._replay_outcome(stored, items[i])
                    continue
                arm, version = record.arm, record.model_version
                counts[metrics.predictions, arm, version, "200"] += 1
                counts[metrics.predicted_class, arm, version, record.prediction] += 1
                if record.label is not None:
                    counts[metrics.labels, arm, version, "true" if record.label == record.prediction else "false"] += 1
                metrics.child(metrics.predict_latency, arm).observe(now - items[i].arrived)
                out[i] = views.predict_response(record, prediction)
            for (metric, *values), n in counts.items():
                metrics.child(metric, *values).inc(n)
            if stored_rows and self.on_recorded is not None:
                champion = [
                    (record, row)
                    for (i, record, _, row), stored in zip(records, stored_rows, strict=False)
                    if record.arm == CHAMPION and stored.request_id == record.request_id
                ]
                if champion:
                    self.on_recorded(champion)
        for i, j in duplicates:
            first = logged.get(j)
            if first is not None and isinstance(out[j], PredictResponse):
                out[i] = self._replay_outcome(first, items[i])
            else:
                out[i] = out[j]
        assert all(o is not None for o in out)
        return out  # type: ignore[return-value]

    def _predict_arm(
        self,
        entries: list[_Assigned],
        items: list[PendingPrediction],
        experiment_id: str,
        out: list[Outcome | None],
    ) -> list[tuple[_Assigned, Label, float]]:
        """One predict call for an arm's rows; when it raises, row by row, so only failing rows fail.

        Returns:
            (entry, prediction, CPU ms per row) for the rows that were predicted; failures are put in `out`.
        """
        served = entries[0].served
        # CPU time of this thread in the model call, shared out per row: the model's own cost, which a busy
        # machine does not inflate.
        started = time.thread_time()
        try:
            predictions = served.predict_many([e.row for e in entries])
        except Exception:
            predictions = None
        if predictions is not None:
            compute_ms = (time.thread_time() - started) * 1000 / len(entries)
            return [(e, p, compute_ms) for e, p in zip(entries, predictions, strict=True)]
        done: list[tuple[_Assigned, Label, float]] = []
        for entry in entries:
            started = time.thread_time()
            try:
                prediction = served.predict(entry.row)
            except Exception as exc:
                item = items[entry.index]
                out[entry.index] = self._failed(served, entry.arm, experiment_id, str(item.data.user_id), item.key, exc)
                continue
            done.append((entry, prediction, (time.thread_time() - started) * 1000))
        return done

    @staticmethod
    def _key(data: PredictRequest, header: str | None) -> str | None:
        if header is not None and not 1 <= len(header) <= 128:
            raise RouterError("the Idempotency-Key header must be 1 to 128 characters long")
        if header is not None and data.idempotency_key is not None and header != data.idempotency_key:
            raise RouterError("the Idempotency-Key header and the body's idempotency_key differ: send one of them")
        return header if header is not None else data.idempotency_key

    def _replay_outcome(self, first: InferenceRow, item: PendingPrediction) -> Outcome:
        """`_replay` with its 409 as an outcome instead of raised."""
        try:
            return self._replay(first, item.digest, item.key or "")
        except RouterError as exc:
            return exc

    def _replay(self, first: InferenceRow, digest: str | None, key: str) -> PredictResponse:
        if first.fingerprint is not None and first.fingerprint != digest:
            raise IdempotencyConflict(
                f"idempotency key {key[:128]!r} was used for another request (request {first.request_id}); "
                "use a new key for a new request",
                extra={"request_id": first.request_id},
            )
        self.metrics.replays.inc()
        return views.predict_response(first)

    def _failed(
        self, served: ServedModel, arm: Arm, experiment_id: str, user_id: str, key: str | None, exc: Exception
    ) -> PredictionFailed:
        """Record a model failure against its arm and build the 500 the client gets."""
        request_id = new_request_id()
        logger.exception("%s (%s arm) failed to predict, request %s", served.what, arm, request_id, exc_info=exc)
        self.metrics.predictions.labels(arm, served.version, "500").inc()
        self.metrics.errors.labels(arm, served.version).inc()
        try:
            self.store.log.record_error(
                PredictionErrorRow(
                    request_id=request_id,
                    ts=self.clock(),
                    user_id=user_id,
                    arm=arm,
                    model_name=served.name,
                    model_version=served.version,
                    experiment_id=experiment_id,
                    error=redact(f"{type(exc).__name__}: {exc}"),
                    idempotency_key=key,
                )
            )
        except Exception:
            logger.exception("could not record the failed prediction %s", request_id)
        return PredictionFailed(
            f"model {served.what} ({arm} arm) failed to predict: {type(exc).__name__} "
            f"(request {request_id}; see the router log)",
            extra={
                "request_id": request_id,
                "arm": arm,
                "model_version": served.version,
                "experiment_id": experiment_id,
            },
        )
