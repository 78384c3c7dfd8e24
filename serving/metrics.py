"""The router's Prometheus metrics (prometheus-client), one registry per app, and the middleware timing requests."""

from __future__ import annotations

import time
from typing import Any

from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from serving.errors import RouterError

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class RouterMetrics:
    """Every metric the router exports; a registry of its own, so two apps in one process do not mix counts."""

    def __init__(self) -> None:
        """Create the metrics in a fresh registry."""
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        r = self.registry
        self.http_requests = Counter(
            "driftloop_router_http_requests", "HTTP requests by route, method and status.",
            ["route", "method", "status"], registry=r,
        )  # fmt: skip
        self.http_latency = Histogram(
            "driftloop_router_http_request_duration_seconds", "Time from request to response, by route.",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.predictions = Counter(
            "driftloop_router_predict_requests", "Answered or failed /predict requests by arm, version and status.",
            ["arm", "model_version", "status"], registry=r,
        )  # fmt: skip
        self.predict_latency = Histogram(
            "driftloop_router_predict_duration_seconds", "Time to assign, predict and record one request, by arm.",
            ["arm"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.predicted_class = Counter(
            "driftloop_router_predictions", "Predictions by arm, version and predicted class.",
            ["arm", "model_version", "prediction"], registry=r,
        )  # fmt: skip
        self.labels = Counter(
            "driftloop_router_labels", "Labels received (inline or feedback) by arm, version and correctness.",
            ["arm", "model_version", "correct"], registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "driftloop_router_prediction_errors", "Predictions whose model raised, by arm and version.",
            ["arm", "model_version"], registry=r,
        )  # fmt: skip
        self.replays = Counter(
            "driftloop_router_idempotent_replays", "Retries answered from the log (same idempotency key).",
            registry=r,
        )  # fmt: skip
        self.store_writes = Histogram(
            "driftloop_router_store_write_duration_seconds", "Time of each committed store write, by operation.",
            ["operation"], buckets=_STORE_BUCKETS, registry=r,
        )  # fmt: skip
        self.store_errors = Counter(
            "driftloop_router_store_unavailable", "Requests answered 503 because the store failed.", registry=r
        )
        self.model_load_failures = Counter(
            "driftloop_router_model_load_failures", "Versions that failed to load, by alias.", ["alias"], registry=r
        )
        self.outbox_depth = Gauge(
            "driftloop_router_outbox_depth", "Router events waiting to be accepted by the Prefect API.", registry=r
        )
        self.serving = Gauge(
            "driftloop_router_serving", "1 for each version served, by alias.", ["alias", "model_version"], registry=r
        )
        self.batch_size = Histogram(
            "driftloop_router_predict_batch_size", "Requests per micro-batch (one predict per arm, one commit).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r,
        )  # fmt: skip
        self.overloaded = Counter(
            "driftloop_router_predict_overloaded", "Predictions refused with 503 because the queue was full.",
            registry=r,
        )  # fmt: skip
        self.shadow = Counter(
            "driftloop_router_shadow_predictions", "Shadow predictions of the challenger by outcome.",
            ["outcome"], registry=r,
        )  # fmt: skip

    def child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, bound once: `labels` checks, converts and takes a lock on every call, and the
        request path counts every request. Not for `serving`, whose children are cleared."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def observe_batch(self, size: int) -> None:
        """Note the size of one micro-batch."""
        self.batch_size.observe(size)

    def observe_store_write(self, operation: str, seconds: float) -> None:
        """Record one committed store write."""
        self.child(self.store_writes, operation).observe(seconds)

    def model_load_failed(self, alias: str) -> None:
        """Count one failed model load."""
        self.model_load_failures.labels(alias).inc()

    def set_serving(self, versions: dict[str, str | None]) -> None:
        """Show which versions serve (alias -> version or None)."""
        self.serving.clear()
        for alias, version in versions.items():
            if version is not None:
                self.serving.labels(alias, version).set(1)


ARRIVED = "driftloop.arrived"
"""Scope key: `time.perf_counter()` when the request arrived (a request's latency counts from here)."""


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request by its route template and status."""

    def __init__(self, app: ASGIApp, metrics: RouterMetrics) -> None:
        """Wrap `app`."""
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, noting the status of its response."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        scope[ARRIVED] = started  # type: ignore[literal-required]
        status: int | None = None

        async def noting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting)
        except Exception as exc:
            # Raised before any response (by a middleware inside this one, e.g. a refused token): the exception
            # handlers answer it outside, with the error's own status.
            if status is None and isinstance(exc, RouterError | HTTPException):
                status = exc.status_code
            raise
        finally:
            route = _route(scope)
            metrics = self.metrics
            metrics.child(metrics.http_requests, route, scope.get("method", ""), str(status or 500)).inc()
            metrics.child(metrics.http_latency, route).observe(time.perf_counter() - started)


def _route(scope: Any) -> str:
    """The route template (`/predict`), never the raw path: raw paths would make unbounded label values."""
    template = scope.get("path_template")
    if template:
        return str(template)
    handler = scope.get("route_handler")
    paths = getattr(handler, "paths", None)
    return sorted(paths)[0] if paths else "unmatched"
