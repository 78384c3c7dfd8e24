"""The prediction path: one request in, one answer out (assign, check, predict, record), exactly once per key."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from contracts.api import Arm, PredictRequest, PredictResponse
from serving.errors import IdempotencyConflict, PredictionFailed, RouterError, redact
from serving.metrics import RouterMetrics
from serving.security import Authorizer
from serving.services import views
from serving.services.arm_state import ArmStates
from serving.services.assignment import assign_arm
from serving.services.models import ModelManager, ServedModel
from serving.services.store import InferenceRow, PredictionErrorRow, Store

logger = logging.getLogger(__name__)


def fingerprint(data: PredictRequest) -> str:
    """A digest of what a request asks (user, features, label): a key reused for another request is refused."""
    canonical = json.dumps(
        {"user_id": str(data.user_id), "features": data.features, "label": data.label},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class PredictService:
    """Answers `/predict`: a request in, a response out, committed to the log before it returns. Blocking."""

    def __init__(
        self,
        *,
        store: Store,
        models: ModelManager,
        authorizer: Authorizer,
        metrics: RouterMetrics,
        salt: str,
        default_split: float,
        fresh_salt: bool = True,
        max_abs_feature: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """Wire the service.

        Args:
            store: The inference log and the shared split.
            models: The champion/challenger being served.
            authorizer: Checks the label token of inline labels.
            metrics: Where counts and latencies go.
            salt: Salt of the user hash (without `fresh_salt`, and for experiments stored without one).
            fresh_salt: Use each experiment's own secret salt from the store.
            default_split: The split when the store holds none.
            max_abs_feature: Largest magnitude of a numeric feature.
            clock: Current UTC time.
        """
        self.store = store
        self.models = models
        self.authorizer = authorizer
        self.metrics = metrics
        self.salt = salt
        self.arm_states = ArmStates(store, default_salt=salt, fresh_salt=fresh_salt)
        self.default_split = default_split
        self.max_abs_feature = max_abs_feature
        self.clock = clock

    def split(self) -> float:
        """The split in force (the store's, shared by replicas; the settings' until one is stored)."""
        split = self.store.config.get_split()
        return self.default_split if split is None else split

    def predict(
        self, data: PredictRequest, *, idempotency_key: str | None = None, authorization: str | None = None
    ) -> PredictResponse:
        """Assign the user to an arm, check, predict with that arm's model, log the request (committed), answer.

        Args:
            data: The request body.
            idempotency_key: The `Idempotency-Key` header, if sent (the body field works as well).
            authorization: The `Authorization` header (an inline label needs the label token).

        Returns:
            The answer; for a key seen before, the first answer, unchanged and not counted again.

        Raises:
            RouterError: 4xx for a bad request (nothing is recorded), 503 without a champion or a store.
        """
        key = self._key(data, idempotency_key)
        if data.label is not None:
            self.authorizer.check("label", authorization)
        digest = fingerprint(data) if key else None
        if key and (first := self.store.log.by_key(key)) is not None:
            return self._replay(first, digest, key)
        started = time.perf_counter()
        # One snapshot for the whole request: a concurrent swap cannot mix versions within it.
        current = self.models.current
        current.require_champion()
        assert current.experiment_id is not None
        # The experiment's own secret salt; a paused experiment sends everyone to the champion, logged apart.
        state = self.arm_states.of(current)
        arm: Arm = assign_arm(
            str(data.user_id),
            salt=state.salt,
            split_b=self.split() if current.challenger and not state.paused else 0.0,
            has_challenger=current.challenger is not None,
        )
        served = current.for_arm(arm)
        assert served is not None
        row = served.check(data.features, max_abs=self.max_abs_feature)
        label = None if data.label is None else served.check_label(data.label)
        # CPU time of this thread in the model call: the model's own cost, which a busy machine does not inflate.
        cpu_started = time.thread_time()
        try:
            prediction = served.predict(row)
        except Exception as exc:
            raise self._failed(served, arm, state.experiment_id, str(data.user_id), key, exc) from exc
        compute_ms = (time.thread_time() - cpu_started) * 1000
        record = InferenceRow(
            request_id=uuid.uuid4().hex,
            ts=self.clock(),
            user_id=str(data.user_id),
            arm=arm,
            model_name=served.name,
            model_version=served.version,
            experiment_id=state.experiment_id,
            features=row,
            prediction=str(prediction),
            label=label,
            latency_ms=(time.perf_counter() - started) * 1000,
            compute_ms=compute_ms,
            idempotency_key=key,
            fingerprint=digest,
        )
        stored = self.store.log.record(record)
        if stored.request_id != record.request_id:
            assert key is not None
            return self._replay(stored, digest, key)  # a concurrent retry with the same key got there first
        self.metrics.predictions.labels(arm, served.version, "200").inc()
        self.metrics.predict_latency.labels(arm).observe(time.perf_counter() - started)
        self.metrics.predicted_class.labels(arm, served.version, record.prediction).inc()
        if label is not None:
            self.metrics.labels.labels(arm, served.version, str(label == record.prediction).lower()).inc()
        return views.predict_response(record, prediction)

    @staticmethod
    def _key(data: PredictRequest, header: str | None) -> str | None:
        if header is not None and not 1 <= len(header) <= 128:
            raise RouterError("the Idempotency-Key header must be 1 to 128 characters long")
        if header is not None and data.idempotency_key is not None and header != data.idempotency_key:
            raise RouterError("the Idempotency-Key header and the body's idempotency_key differ: send one of them")
        return header if header is not None else data.idempotency_key

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
        request_id = uuid.uuid4().hex
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
