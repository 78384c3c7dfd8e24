"""HTTP handlers of the router: thin, each one hands its request to a service and returns the service's answer.

Every route declares what it needs in `opt`: `scope` (the token, see `serving.security`) and `json_body`
(the body must be `application/json`). Every POST answers 200, not 201: clients use the router as an RPC
endpoint and check one success code. Handlers that touch the store or MLflow are sync and run in a worker
thread (`sync_to_thread=True`), so pandas, SQL commits and registry calls never block the event loop.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, MediaType, Request, Response, get, post, put
from litestar.openapi import ResponseSpec
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from contracts.api import (
    IDEMPOTENCY_HEADER,
    PAGE_MAX,
    ROUTE_CONFIG,
    ROUTE_EXPERIMENT,
    ROUTE_EXPERIMENT_END,
    ROUTE_EXPERIMENT_OUTCOMES,
    ROUTE_EXPERIMENT_PAUSE,
    ROUTE_EXPERIMENT_PLAN,
    ROUTE_EXPERIMENT_RESUME,
    ROUTE_FEEDBACK,
    ROUTE_HEALTH,
    ROUTE_INFERENCES,
    ROUTE_METRICS,
    ROUTE_MODELS_RELOAD,
    ROUTE_PREDICT,
    ROUTE_PREDICT_BATCH,
    ROUTE_READY,
    ConfigUpdate,
    ErrorBody,
    Experiment,
    ExperimentEnd,
    ExperimentPause,
    ExperimentPlan,
    FeedbackRequest,
    FeedbackResponse,
    Health,
    InferencePage,
    Outcomes,
    PredictBatchRequest,
    PredictBatchResponse,
    PredictRequest,
    PredictResponse,
    Readiness,
    RouterConfig,
    page_cursor,
    parse_cursor,
)
from serving.errors import InvalidCursor, PayloadTooLarge, RouterError
from serving.metrics import ARRIVED, RouterMetrics
from serving.services import views
from serving.services.experiments import ExperimentService
from serving.services.labels import FeedbackService
from serving.services.models import ModelManager
from serving.services.predict import PendingPrediction, PredictQueue
from serving.services.readiness import check_ready
from serving.services.shadow import ShadowScorer
from serving.services.split import SplitCache
from serving.services.store import Store
from serving.settings import RouterSettings


def _error(description: str) -> ResponseSpec:
    return ResponseSpec(data_container=ErrorBody, description=description, generate_examples=False)


_BAD = {
    400: _error("Malformed JSON, a missing or unknown field, a value outside its schema"),
    413: _error("The body is larger than the router accepts (DRIFTLOOP_MAX_BODY_BYTES)"),
    415: _error("The body is not application/json"),
}
_AUTH = {
    401: _error("A token is needed and none was sent"),
    403: _error("The token sent does not grant this"),
}
_STORE = {503: _error("The store is busy, read-only or unreachable (see Retry-After), or no champion is loaded")}
_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]

# What each route needs (see `serving.security.check_access`).
ADMIN: dict[str, Any] = {"scope": "admin"}
LABEL: dict[str, Any] = {"scope": "label"}
READ: dict[str, Any] = {"scope": "read"}
CLIENT: dict[str, Any] = {"scope": "client"}
JSON: dict[str, Any] = {"json_body": True}


def _authorization(request: Request[Any, Any, Any]) -> str | None:
    return request.headers.get("authorization")


class InferenceController(Controller):
    """Predictions, their labels, and the log of both."""

    path = "/"
    tags = ["inference"]

    @post(
        ROUTE_PREDICT,
        operation_id="predict",
        status_code=HTTP_200_OK,
        opt=CLIENT | JSON,
        security=_SECURITY,
        responses={
            **_BAD,
            **_AUTH,
            409: _error("The idempotency key was used for another request"),
            422: _error("The features do not match the model signature, or the label is not one of its classes"),
            500: _error("The model raised while predicting (the attempt is recorded as an error of its arm)"),
            503: _error("The queue is full, the store is busy or read-only (see Retry-After), or no champion"),
        },
    )
    async def predict(
        self,
        request: Request[Any, Any, Any],
        data: PredictRequest,
        predict_queue: PredictQueue,
        idempotency_key: Annotated[
            str | None,
            Parameter(
                header=IDEMPOTENCY_HEADER,
                min_length=1,
                max_length=128,
                description="A retry with the same key returns the first answer and is counted once.",
            ),
        ] = None,
    ) -> PredictResponse:
        """Assign the user to an arm, predict with that arm's model, log the request (committed), answer.

        An inline `label` needs the label (or admin) token. Concurrent requests are answered in micro-batches
        (one predict per arm, one commit); a full queue answers 503 with Retry-After.
        """
        return await predict_queue.run(
            data,
            idempotency_key=idempotency_key,
            authorization=_authorization(request),
            arrived=request.scope.get(ARRIVED),  # type: ignore[call-overload]
        )

    @post(
        ROUTE_PREDICT_BATCH,
        operation_id="predict_batch",
        status_code=HTTP_200_OK,
        opt=CLIENT | JSON,
        security=_SECURITY,
        responses={
            **_BAD,
            **_AUTH,
            503: _error("The queue has no room for the whole batch (see Retry-After), or no champion"),
        },
    )
    async def predict_batch(
        self,
        request: Request[Any, Any, Any],
        data: PredictBatchRequest,
        predict_queue: PredictQueue,
        settings: RouterSettings,
    ) -> PredictBatchResponse:
        """Many predictions in one call: each row is assigned, checked, logged and answered like a `/predict`.

        Each row gets its own status: 200 with its answer, or its own error (a bad row fails alone). The rows are
        queued together (all or none: 503 with Retry-After when the queue has no room for them).
        """
        if len(data.requests) > settings.predict_batch_rows_max:
            raise PayloadTooLarge(
                f"a batch holds at most {settings.predict_batch_rows_max} requests, got {len(data.requests)}"
            )
        arrived = request.scope.get(ARRIVED)  # type: ignore[call-overload]
        authorization = _authorization(request)
        outcomes: list[Any] = [None] * len(data.requests)
        pending: list[tuple[int, PendingPrediction]] = []
        for i, row in enumerate(data.requests):
            try:
                pending.append((i, predict_queue.predictor.prepare(row, authorization=authorization, arrived=arrived)))
            except RouterError as exc:
                outcomes[i] = exc
        futures = predict_queue.batcher.submit([p for _, p in pending])
        answers = await asyncio.gather(*futures, return_exceptions=True)
        for (i, _), answer in zip(pending, answers, strict=True):
            outcomes[i] = answer
        return PredictBatchResponse(results=[views.batch_item(outcome) for outcome in outcomes])

    @post(
        ROUTE_FEEDBACK,
        operation_id="submit_feedback",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        opt=LABEL | JSON,
        security=_SECURITY,
        responses={
            **_BAD,
            **_AUTH,
            404: _error("Unknown request_id"),
            409: _error("The request already has another label"),
            422: _error("The label is not one of the model's classes"),
            **_STORE,
        },
    )
    def feedback(self, data: FeedbackRequest, labels: FeedbackService) -> FeedbackResponse:
        """Attach the true label to a logged prediction (write-once; the same label again is harmless)."""
        return labels.submit(data)

    @get(
        ROUTE_INFERENCES,
        operation_id="list_inferences",
        sync_to_thread=True,
        opt=READ,
        security=_SECURITY,
        responses={**_BAD, **_AUTH, **_STORE},
    )
    def inferences(
        self,
        store: Store,
        limit: Annotated[int, Parameter(ge=1, le=PAGE_MAX, description="At most this many records.")] = 500,
        since: Annotated[
            datetime | None, Parameter(description="Only records at or after this ISO datetime (naive: UTC).")
        ] = None,
        labelled: Annotated[
            bool | None, Parameter(description="true: only labelled records; false: only unlabelled.")
        ] = None,
        before: Annotated[
            str | None, Parameter(description="Cursor: the `next_cursor` of the previous page (older records).")
        ] = None,
    ) -> InferencePage:
        """The inference log, newest first, a page at a time (the drift and retrain flows walk their windows here)."""
        try:
            after = parse_cursor(before) if before is not None else None
        except ValueError as exc:
            raise InvalidCursor(str(exc), extra={"before": before[:80]}) from None
        rows = store.log.recent(limit=limit, since=since, labelled=labelled, before=after)
        records = [views.inference_record(r) for r in rows]
        full = len(records) == limit
        return InferencePage(records=records, next_cursor=page_cursor(records[-1]) if full else None)


class ConfigController(Controller):
    """The run-time configuration, shared by every replica through the store."""

    path = ROUTE_CONFIG
    tags = ["config"]

    @get("/", operation_id="get_config", sync_to_thread=True, responses=_STORE)
    def get_config(self, experiments: ExperimentService) -> RouterConfig:
        """The split in force."""
        return RouterConfig(ab_split_b=experiments.split())

    @post(
        "/",
        operation_id="set_config",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        opt=ADMIN | JSON,
        security=_SECURITY,
        responses={**_BAD, **_AUTH, **_STORE},
    )
    def set_config(self, data: ConfigUpdate, store: Store, split: SplitCache) -> RouterConfig:
        """Change the split for every replica (here at once, on the others within one refresh interval)."""
        value = store.config.set_split(data.ab_split_b)
        split.use(value)
        return RouterConfig(ab_split_b=value)


class ExperimentController(Controller):
    """The current experiment: its record, its plan, its end, and how its arms are doing."""

    path = "/"
    tags = ["experiment"]

    @get(ROUTE_EXPERIMENT, operation_id="get_experiment", sync_to_thread=True, responses=_STORE)
    def get_experiment(self, experiments: ExperimentService) -> Experiment:
        """The experiment being served: started, plan, sample reached, ended (status `none` without a challenger)."""
        return experiments.current()

    @put(
        ROUTE_EXPERIMENT_PLAN,
        operation_id="set_experiment_plan",
        sync_to_thread=True,
        opt=ADMIN | JSON,
        security=_SECURITY,
        responses={
            **_BAD,
            **_AUTH,
            409: _error("The experiment started under another plan or ended, or the registry's plan tags differ"),
            422: _error("The plan names no versions or the same version twice"),
            503: _error("The registry or the store could not be read"),
        },
    )
    def set_plan(self, data: ExperimentPlan, experiments: ExperimentService, split: SplitCache) -> Experiment:
        """Store the plan of `v{champion}-vs-v{challenger}` before it starts; it must match the registry's plan tags."""
        try:
            return experiments.set_plan(data)
        finally:
            split.invalidate()  # a new plan brings its split

    @post(
        ROUTE_EXPERIMENT_END,
        operation_id="end_experiment",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        opt=ADMIN | JSON,
        security=_SECURITY,
        responses={
            **_BAD,
            **_AUTH,
            409: _error("The challenger is not the current or most recent experiment's, or it ended otherwise"),
            503: _error("Marked ended, but the models could not be reloaded from the registry"),
        },
    )
    def end(self, data: ExperimentEnd, experiments: ExperimentService, split: SplitCache) -> Experiment:
        """Mark the experiment of this challenger ended with its decision, then reload the models at once."""
        try:
            return experiments.end(data)
        finally:
            split.invalidate()

    @post(
        ROUTE_EXPERIMENT_PAUSE,
        operation_id="pause_experiment",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        opt=ADMIN | JSON,
        security=_SECURITY,
        responses={**_BAD, **_AUTH, 409: _error("That challenger is not under test, or its experiment ended")},
    )
    def pause(self, data: ExperimentPause, experiments: ExperimentService) -> Experiment:
        """Pause the experiment: the champion serves everyone, the challenger keeps its alias (a repeat is a no-op)."""
        return experiments.pause(data)

    @post(
        ROUTE_EXPERIMENT_RESUME,
        operation_id="resume_experiment",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        opt=ADMIN | JSON,
        security=_SECURITY,
        responses={**_BAD, **_AUTH, 409: _error("That challenger is not under test, or its experiment ended")},
    )
    def resume(self, data: ExperimentPause, experiments: ExperimentService) -> Experiment:
        """Resume a paused experiment: the split in force applies again (a running one is left as it is)."""
        return experiments.resume(data)

    @get(
        ROUTE_EXPERIMENT_OUTCOMES,
        operation_id="get_outcomes",
        sync_to_thread=True,
        opt=READ,
        security=_SECURITY,
        responses={**_AUTH, **_STORE},
    )
    def outcomes(
        self,
        experiments: ExperimentService,
        shadow: ShadowScorer,
        bucket_seconds: Annotated[
            int, Parameter(ge=1, le=86_400, description="Width of the latency buckets in seconds.")
        ] = 60,
    ) -> Outcomes:
        """Per arm of the current experiment: requests, labels, errors, users, latency percentiles, confusion, and
        latency per time bucket; in shadow mode, the challenger's scores of champion requests beside them."""
        outcomes = experiments.outcomes(bucket_seconds)
        return msgspec.structs.replace(outcomes, shadow=shadow.outcome(outcomes.experiment_id))


_HEALTH_503 = ResponseSpec(
    data_container=Health, description="No champion loaded (status `no_model`)", generate_examples=False
)


def _health(models: ModelManager) -> Response[Health]:
    health = views.health(models.current)
    status = HTTP_503_SERVICE_UNAVAILABLE if health.status == "no_model" else HTTP_200_OK
    return Response(health, status_code=status)


class ModelController(Controller):
    """Which versions serve, whether this replica is ready, reloading from the registry, and the metrics."""

    path = "/"
    tags = ["models"]

    @get(ROUTE_HEALTH, operation_id="get_health", responses={503: _HEALTH_503})
    async def health(self, models: ModelManager) -> Response[Health]:
        """Liveness (no store or registry call): `ok`, `degraded` with the reasons (200), or `no_model` (503)."""
        return _health(models)

    @get(
        ROUTE_READY,
        operation_id="get_ready",
        sync_to_thread=True,
        responses={503: ResponseSpec(data_container=Readiness, description="Not ready: see the failed checks")},
    )
    def ready(
        self, store: Store, models: ModelManager, settings: RouterSettings, replica_id: str
    ) -> Response[Readiness]:
        """Readiness: the store takes a write, a champion is loaded, and the aliases were read recently."""
        readiness = check_ready(
            store=store,
            models=models,
            replica_id=replica_id,
            max_refresh_age=settings.ready_max_refresh_age_seconds if settings.model_refresh_seconds > 0 else None,
        )
        return Response(readiness, status_code=HTTP_200_OK if readiness.ready else HTTP_503_SERVICE_UNAVAILABLE)

    @post(
        ROUTE_MODELS_RELOAD,
        operation_id="reload_models",
        status_code=HTTP_200_OK,
        sync_to_thread=True,
        opt=ADMIN,
        security=_SECURITY,
        responses={**_AUTH, 415: _BAD[415], 503: _HEALTH_503},
    )
    def reload_models(self, experiments: ExperimentService, split: SplitCache) -> Response[Health]:
        """Re-read the aliases now (call after moving one); 503 with ErrorBody when the registry fails."""
        experiments.refresh()
        split.invalidate()  # a registry plan adopted by the refresh may have brought its split
        return _health(experiments.models)

    @get(ROUTE_METRICS, operation_id="get_metrics", sync_to_thread=False, media_type=MediaType.TEXT)
    def metrics(self, metrics: RouterMetrics) -> Response[str]:
        """Prometheus metrics in the text exposition format."""
        # Litestar appends the charset to text types itself: pass the exposition type without it.
        media_type = CONTENT_TYPE_LATEST.split("; charset")[0]
        return Response(generate_latest(metrics.registry).decode(), media_type=media_type)
