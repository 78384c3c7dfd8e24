"""The router's app factory: services wired once, the lifespan (store, model source, background loops), errors."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
from litestar import Litestar, MediaType, Request, Response
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from contracts.api import ErrorBody, PredictResponse
from contracts.registry import CHALLENGER, CHAMPION
from serving.controllers import ConfigController, ExperimentController, InferenceController, ModelController
from serving.errors import Overloaded, RouterError, StoreUnavailable, redact
from serving.metrics import MetricsMiddleware, RouterMetrics
from serving.security import AccessMiddleware, Authorizer
from serving.services.batching import MicroBatcher
from serving.services.events import EventEmitter, emit_prefect_event
from serving.services.experiments import ExperimentService
from serving.services.heartbeat import TrafficHeartbeat
from serving.services.labels import FeedbackService
from serving.services.models import ModelManager, ModelSource, SupportsModelSource
from serving.services.predict import PendingPrediction, PredictQueue, PredictService
from serving.services.relay import EventRelay
from serving.services.shadow import ShadowScorer
from serving.services.split import SplitCache
from serving.services.store import Store
from serving.settings import RouterSettings, get_settings

logger = logging.getLogger(__name__)

YOUNG_GC_THRESHOLD = 20_000
"""Allocations between two collections of the youngest generation while serving (Python's default: 700)."""

BATCHING_THREADS = 3
"""Threads of the micro-batchers (the predict stage, the group commit, the shadow scorer), besides the workers."""


def _from_state(state: State, name: str) -> Provide:
    # No parameters: Litestar validates a provider's arguments on every request, and the app's state needs no
    # validating (this reads the state the app was given, so a service swapped in it is seen).
    def provide() -> Any:
        return state[name]

    provide.__doc__ = f"The app's {name}."
    return Provide(provide, sync_to_thread=False)


def _error_response(status_code: int, detail: str, extra: Any = None, headers: Any = None) -> Response[ErrorBody]:
    # Error bodies never carry URIs (hosts, paths, credentials in them): details are redacted here, once.
    if isinstance(extra, dict):
        extra = {k: redact(v) if isinstance(v, str) else v for k, v in extra.items()}
    return Response(
        ErrorBody(status_code=status_code, detail=redact(detail), extra=extra),
        status_code=status_code,
        media_type=MediaType.JSON,
        headers=headers,
    )


def router_error_handler(request: Request[Any, Any, Any], exc: RouterError) -> Response[ErrorBody]:
    """Domain errors: their own status, detail and headers (Retry-After, WWW-Authenticate)."""
    if isinstance(exc, StoreUnavailable):
        request.app.state.metrics.store_errors.inc()
    elif isinstance(exc, Overloaded):
        request.app.state.metrics.overloaded.inc()
    return _error_response(exc.status_code, exc.detail, exc.extra, exc.headers or None)


def _explain(item: Any) -> str:
    """One validation message, with the field it is about and without msgspec's KeyError noise."""
    if not isinstance(item, dict):
        return str(item)
    key, message = item.get("key"), str(item.get("message", ""))
    if message == f"'{key}'":
        # msgspec reports an absent body as KeyError('data').
        return "request body is missing or empty" if key == "data" else f"{key}: is required"
    return message if key in (None, "data") else f"{key}: {message}"


def http_error_handler(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    """Litestar's own errors (validation, malformed JSON, 404, 405, 413) as an `ErrorBody` saying what was wrong."""
    detail, extra = exc.detail, exc.extra
    if isinstance(exc.__cause__, SerializationException):
        detail = f"malformed JSON body: {exc.detail}"
    elif isinstance(exc, ValidationException) and isinstance(extra, list) and extra:
        detail = f"{exc.detail}: " + "; ".join(_explain(item) for item in extra)
    if exc.status_code >= HTTP_500_INTERNAL_SERVER_ERROR:
        logger.error("%s: %s", type(exc).__name__, detail, exc_info=exc)
    return _error_response(exc.status_code, detail, extra, exc.headers)


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    """Anything unexpected: log the traceback, tell the client only that it was our fault."""
    logger.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return _error_response(HTTP_500_INTERNAL_SERVER_ERROR, "internal server error (see the router log)")


async def refresh_once(experiments: ExperimentService) -> None:
    """One turn of the refresh loop, in a worker thread; never raises.

    Re-reads the aliases and records the experiment being served (start, plan, sample reached). A registry
    failure keeps the current models and is logged; the experiment is recorded all the same.
    """
    models = experiments.models
    try:
        await anyio.to_thread.run_sync(experiments.refresh)
    except RouterError as exc:
        logger.warning("model refresh failed, serving %s: %s", models.current.describe(), exc.detail)
    except Exception:
        logger.exception("model refresh crashed, still serving %s", models.current.describe())


async def relay_once(relay: EventRelay, metrics: RouterMetrics | None = None) -> None:
    """One turn of the outbox relay, in a worker thread; never raises (a store failure waits for the next turn)."""
    try:
        await anyio.to_thread.run_sync(relay.run_once)
        if metrics is not None:
            metrics.outbox_depth.set(await anyio.to_thread.run_sync(relay.store.outbox.pending))
    except RouterError as exc:
        logger.warning("outbox relay: %s", exc.detail)
    except Exception:
        logger.exception("outbox relay crashed; next turn retries")


_gc_lock = threading.Lock()
_gc_users: list[tuple[int, int, int]] = []
"""The thresholds found by each app serving in this process (several in tests); the last one out restores them."""


@contextlib.contextmanager
def _steady_gc(young_threshold: int) -> Iterator[None]:
    """Keep the garbage collector off the request path while the app serves, and put it back as it was after.

    Everything alive once the app has started (the libraries behind a loaded model make hundreds of thousands of
    objects) moves to the collector's permanent generation: a full collection then no longer walks them (one took
    0.5 to 0.7 s on the 2-core machine, holding the GIL: every request waited). The youngest generation is
    collected less often: each request allocates hundreds of objects, most of them freed before a collection.
    """
    with _gc_lock:
        _gc_users.append(gc.get_threshold())
        gc.freeze()
        young, *older = _gc_users[0]
        gc.set_threshold(max(young_threshold, young), *older)
    try:
        yield
    finally:
        with _gc_lock:
            first = _gc_users[0]
            _gc_users.pop()
            if not _gc_users:
                gc.set_threshold(*first)
                gc.unfreeze()


async def _every(interval: float, turn: Callable[[], Awaitable[None]]) -> None:
    """Run `turn` every `interval` seconds until cancelled."""
    while True:
        await anyio.sleep(interval)
        await turn()


def create_app(
    settings: RouterSettings | None = None,
    *,
    model_source: SupportsModelSource | None = None,
    store: Store | None = None,
    event_emitter: EventEmitter | None = None,
) -> Litestar:
    """Build the router.

    Args:
        settings: Router settings; `get_settings()` when None.
        model_source: Where champion/challenger come from; an MLflow `ModelSource` on
            `settings.mlflow_tracking_uri` when None.
        store: Inference log and shared config; a `Store` on `settings.store_url()` when None.
        event_emitter: Sends the router's Prefect events from the outbox; `emit_prefect_event` (which needs
            `PREFECT_API_URL`) when None. Tests pass a callable that records them.

    Returns:
        The Litestar app. Nothing is opened until its lifespan starts.

    Raises:
        ValueError: `settings.ab_split_b` is outside [0, 1].
    """
    settings = settings or get_settings()
    if not 0.0 <= settings.ab_split_b <= 1.0:
        raise ValueError(f"ab_split_b must be within [0, 1], got {settings.ab_split_b}")
    store = store if store is not None else Store(settings.store_url())
    store.db.busy_timeout = settings.store_busy_timeout_seconds
    store.db.retry_after = settings.store_retry_after_seconds
    store.db.sqlite_synchronous = settings.store_sqlite_synchronous
    # One pooled connection per thread that may use the store: the batching threads and the workers.
    store.db.pool_size = max(settings.worker_threads, BATCHING_THREADS + 1)
    source = model_source or ModelSource(settings.mlflow_tracking_uri, settings.model_name, lean=settings.lean_pipeline)
    metrics = RouterMetrics()
    store.db.on_write = metrics.observe_store_write
    authorizer = Authorizer(settings)
    replica_id = uuid.uuid4().hex
    models = ModelManager(source, retry_seconds=settings.model_retry_seconds, on_load_failure=metrics.model_load_failed)
    experiments = ExperimentService(store=store, models=models, default_split=settings.ab_split_b)
    emitter = event_emitter or emit_prefect_event
    relay = EventRelay(
        store=store,
        emit=emitter,
        replica_id=replica_id,
        max_backoff=settings.outbox_max_backoff_seconds,
    )
    split = SplitCache(
        store,
        default=settings.ab_split_b,
        # With a refresh loop the cache is reloaded at every turn; without one, every batch reads the store.
        max_age=settings.model_refresh_seconds,
    )
    predictor = PredictService(
        store=store,
        models=models,
        authorizer=authorizer,
        metrics=metrics,
        salt=settings.assignment_salt,
        split=split,
        max_abs_feature=settings.max_abs_feature,
        fresh_salt=settings.fresh_salt_per_experiment,
    )
    batcher: MicroBatcher[PendingPrediction, PredictResponse] = MicroBatcher(
        # Two stages: the next batch is predicted while the previous one commits.
        predictor.predict_batch,
        commit=predictor.commit,
        window_seconds=settings.predict_batch_window_ms / 1000,
        quiet_seconds=settings.predict_batch_quiet_ms / 1000,
        burst_memory=settings.predict_batch_burst_memory,
        max_batch=settings.predict_batch_max,
        max_queue=settings.predict_queue_max,
        retry_after=settings.store_retry_after_seconds,
        on_batch=metrics.observe_batch,
    )
    shadow = ShadowScorer(store=store, models=models, metrics=metrics, max_queue=settings.shadow_queue_max)
    if settings.shadow_mode:
        predictor.on_recorded = shadow.offer
    state = {
        "settings": settings,
        "shadow": shadow,
        "store": store,
        "model_source": source,
        "models": models,
        "experiments": experiments,
        "predictor": predictor,
        "batcher": batcher,
        "predict_queue": PredictQueue(predictor, batcher),
        "split": split,
        "labels": FeedbackService(store=store, models=models, metrics=metrics),
        "relay": relay,
        "metrics": metrics,
        "authorizer": authorizer,
        "replica_id": replica_id,
    }

    async def refresh() -> None:
        await refresh_once(experiments)
        try:
            await anyio.to_thread.run_sync(split.reload)
        except RouterError as exc:
            logger.warning("split refresh failed, keeping the cached split: %s", exc.detail)
        current = models.current
        metrics.set_serving({CHAMPION: current.champion_version, CHALLENGER: current.challenger_version})

    app_state = State(state)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if not authorizer.enabled:
            logger.warning("no admin token set: every endpoint is open (bind to loopback only; see the README)")
        # Every other blocking call (handlers, store, models) takes one of these threads and at most one connection;
        # the batching threads hold one connection each at most.
        workers = store.db.pool_size - BATCHING_THREADS
        anyio.to_thread.current_default_thread_limiter().total_tokens = workers
        async with contextlib.AsyncExitStack() as stack:
            await anyio.to_thread.run_sync(store.open)
            stack.push_async_callback(anyio.to_thread.run_sync, store.close)
            split = await anyio.to_thread.run_sync(store.config.ensure_split, settings.ab_split_b)
            await anyio.to_thread.run_sync(source.open)
            stack.push_async_callback(anyio.to_thread.run_sync, source.close)
            # Wait for a running refresh before the source closes under it.
            stack.push_async_callback(anyio.to_thread.run_sync, models.wait_idle)
            # Start anyway when the registry fails: /health says why and the refresh loop keeps trying.
            await refresh()
            logger.info("router up: %s, ab_split_b=%s", models.current.describe(), split)
            stack.enter_context(_steady_gc(YOUNG_GC_THRESHOLD))
            loops = []
            if settings.model_refresh_seconds > 0:
                loops.append(("driftloop-model-refresh", settings.model_refresh_seconds, refresh))
            if settings.outbox_interval_seconds > 0:

                async def relay_turn() -> None:
                    await relay_once(relay, metrics)

                loops.append(("driftloop-outbox", settings.outbox_interval_seconds, relay_turn))
            if settings.traffic_heartbeat_seconds > 0:
                heartbeat = TrafficHeartbeat(
                    store=store, emit=emitter, model_name=settings.model_name, replica_id=replica_id
                )

                async def beat() -> None:
                    with contextlib.suppress(Exception):  # a store hiccup skips one beat; the next one counts it
                        await anyio.to_thread.run_sync(heartbeat.beat)

                loops.append(("driftloop-traffic-heartbeat", settings.traffic_heartbeat_seconds, beat))
            for name, interval, turn in loops:
                task = asyncio.create_task(_every(interval, turn), name=name)

                async def stop(task: asyncio.Task[None] = task) -> None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

                stack.push_async_callback(stop)
            if settings.shadow_mode:
                shadow.start()
                stack.push_async_callback(shadow.close)  # after the batcher: scores what it handed over
            batcher.start()
            stack.push_async_callback(batcher.close)  # answers what is queued before the store closes
            yield

    return Litestar(
        route_handlers=[InferenceController, ConfigController, ExperimentController, ModelController],
        lifespan=[lifespan],
        state=app_state,
        # Outermost first: every request is counted and timed, refused ones too.
        middleware=[
            DefineMiddleware(MetricsMiddleware, metrics=metrics),
            DefineMiddleware(AccessMiddleware, authorizer=authorizer),
        ],
        request_max_body_size=settings.max_body_bytes,
        dependencies={name: _from_state(app_state, name) for name in state},
        exception_handlers={
            RouterError: router_error_handler,
            HTTPException: http_error_handler,
            Exception: internal_error_handler,
        },
        openapi_config=OpenAPIConfig(
            title="driftloop router",
            version="0.2.0",
            description=(
                "Serves a registered MLflow model by alias, A/B-splits users, logs every prediction. Writes need "
                "the admin token, labels the label token, the log and outcomes the read token (bearer)."
            ),
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer", description="Router token")}
            ),
        ),
    )
