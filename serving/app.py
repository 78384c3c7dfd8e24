"""The router's app factory: lifespan (store, model source, alias refresh), dependencies and error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from litestar import Litestar, MediaType, Request, Response
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from contracts.api import ErrorBody
from serving.controllers import ConfigController, ExperimentController, InferenceController, ModelController
from serving.errors import RouterError
from serving.services.events import EventEmitter, emit_prefect_event
from serving.services.experiments import ExperimentService
from serving.services.models import ModelManager, ModelSource, SupportsModelSource
from serving.services.store import Store
from serving.settings import RouterSettings, get_settings

logger = logging.getLogger(__name__)


def provide_store(state: State) -> Store:
    """The open inference store."""
    return state.store


def provide_models(state: State) -> ModelManager:
    """The champion/challenger holder."""
    return state.models


def provide_experiments(state: State) -> ExperimentService:
    """The experiment record."""
    return state.experiments


def provide_settings(state: State) -> RouterSettings:
    """The settings the app was built with."""
    return state.settings


def _error_response(status_code: int, detail: str, extra: Any = None, headers: Any = None) -> Response[ErrorBody]:
    return Response(
        ErrorBody(status_code=status_code, detail=detail, extra=extra),
        status_code=status_code,
        media_type=MediaType.JSON,
        headers=headers,
    )


def router_error_handler(_: Request[Any, Any, Any], exc: RouterError) -> Response[ErrorBody]:
    """Domain errors: their own status and detail."""
    return _error_response(exc.status_code, exc.detail, exc.extra)


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
    """Litestar's own errors (validation, malformed JSON, 404, 405) as an `ErrorBody` saying what was wrong."""
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

    Re-reads the aliases, records the experiment being served (start) and emits its sample-reached event when
    due. A registry failure keeps the current models and is logged; the experiment is recorded all the same.
    """
    models = experiments.models
    try:
        await anyio.to_thread.run_sync(experiments.refresh)
    except RouterError as exc:
        logger.warning("model refresh failed, serving %s: %s", models.current.describe(), exc.detail)
    except Exception:
        logger.exception("model refresh crashed, still serving %s", models.current.describe())


async def _refresh_forever(experiments: ExperimentService, interval: float) -> None:
    """Run `refresh_once` every `interval` seconds until cancelled."""
    while True:
        await anyio.sleep(interval)
        await refresh_once(experiments)


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
        event_emitter: Sends the router's Prefect events; `emit_prefect_event` (which needs `PREFECT_API_URL`)
            when None. Tests pass a callable that records them.

    Returns:
        The Litestar app. Nothing is opened until its lifespan starts.

    Raises:
        ValueError: `settings.ab_split_b` is outside [0, 1].
    """
    settings = settings or get_settings()
    if not 0.0 <= settings.ab_split_b <= 1.0:
        raise ValueError(f"ab_split_b must be within [0, 1], got {settings.ab_split_b}")
    store = store if store is not None else Store(settings.store_url())
    emit = event_emitter or emit_prefect_event
    source = model_source
    if source is None:
        source = ModelSource(settings.mlflow_tracking_uri, settings.model_name)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            await anyio.to_thread.run_sync(store.open)
            stack.push_async_callback(anyio.to_thread.run_sync, store.close)
            split = await anyio.to_thread.run_sync(store.ensure_split, settings.ab_split_b)
            await anyio.to_thread.run_sync(source.open)
            stack.push_async_callback(anyio.to_thread.run_sync, source.close)

            models = ModelManager(source)
            experiments = ExperimentService(store=store, models=models, emit=emit)
            app.state.settings = settings
            app.state.store = store
            app.state.model_source = source
            app.state.models = models
            app.state.experiments = experiments
            # Wait for a running refresh before the source closes under it.
            stack.push_async_callback(anyio.to_thread.run_sync, models.wait_idle)
            try:
                await anyio.to_thread.run_sync(experiments.refresh)
            except RouterError as exc:
                # Start anyway: /health says no_model and the refresh loop keeps trying.
                logger.error("initial model load failed: %s", exc.detail)
            logger.info("router up: %s, ab_split_b=%s", models.current.describe(), split)

            if settings.model_refresh_seconds > 0:
                task = asyncio.create_task(
                    _refresh_forever(experiments, settings.model_refresh_seconds), name="driftloop-model-refresh"
                )

                async def stop_refresh() -> None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

                stack.push_async_callback(stop_refresh)
            yield

    return Litestar(
        route_handlers=[InferenceController, ConfigController, ExperimentController, ModelController],
        lifespan=[lifespan],
        dependencies={
            "store": Provide(provide_store, sync_to_thread=False),
            "models": Provide(provide_models, sync_to_thread=False),
            "experiments": Provide(provide_experiments, sync_to_thread=False),
            "settings": Provide(provide_settings, sync_to_thread=False),
        },
        exception_handlers={
            RouterError: router_error_handler,
            HTTPException: http_error_handler,
            Exception: internal_error_handler,
        },
        openapi_config=OpenAPIConfig(
            title="driftloop router",
            version="0.1.0",
            description="Serves a registered MLflow model by alias, A/B-splits users, logs every prediction.",
        ),
    )
