"""HTTP client of the router, the batch side's only way to read production traffic and A/B outcomes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import httpx
import msgspec

from contracts.api import (
    PAGE_MAX,
    ROUTE_CONFIG,
    ROUTE_EXPERIMENT,
    ROUTE_EXPERIMENT_END,
    ROUTE_EXPERIMENT_OUTCOMES,
    ROUTE_EXPERIMENT_PAUSE,
    ROUTE_EXPERIMENT_PLAN,
    ROUTE_EXPERIMENT_RESUME,
    ROUTE_HEALTH,
    ROUTE_INFERENCES,
    ROUTE_MODELS_RELOAD,
    ConfigUpdate,
    Experiment,
    ExperimentEnd,
    ExperimentPause,
    ExperimentPlan,
    Health,
    InferencePage,
    InferenceRecord,
    Outcomes,
    RouterConfig,
)
from contracts.auth import RouterTokens, bearer


class RouterClient:
    """A thin typed wrapper over the router's HTTP API (shapes from `contracts.api`).

    Reads send the read token, writes the admin token (each falls back to the admin token when its own is
    not set); without tokens the requests go out bare, as to a router that runs open on loopback.
    """

    def __init__(
        self,
        base_url: str,
        *,
        tokens: RouterTokens | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self._http = httpx.Client(base_url=base_url, timeout=timeout, transport=transport)
        admin = tokens.router_admin_token if tokens else None
        self._read = bearer((tokens.router_read_token if tokens else None) or admin)
        self._admin = bearer(admin)

    def __enter__(self) -> RouterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def _get(self, path: str, **params: object) -> bytes:
        params = {k: v for k, v in params.items() if v is not None}
        response = self._http.get(path, params=params, headers=self._read)
        response.raise_for_status()
        return response.content

    def inferences(
        self, *, limit: int, since: datetime | None = None, labelled: bool | None = None, page_size: int = 1000
    ) -> list[InferenceRecord]:
        """The newest logged requests, newest first, read a page at a time (see `pages`)."""
        return [record for page in self.pages(limit=limit, since=since, labelled=labelled, page_size=page_size)
                for record in page]  # fmt: skip

    def pages(
        self, *, limit: int, since: datetime | None = None, labelled: bool | None = None, page_size: int = 1000
    ) -> Iterator[list[InferenceRecord]]:
        """Walk the inference log newest first, one page (one request) at a time, following the router's cursor.

        The router reads one page of rows per request (keyset pagination: a deep page costs what the first does),
        and the caller holds only the pages it keeps: a window of millions of rows never sits in one response.

        Args:
            limit: At most this many records in all.
            since: Only records at or after this time.
            labelled: True: only labelled; False: only unlabelled; None: both.
            page_size: Records per request (at most `contracts.api.PAGE_MAX`).

        Yields:
            Pages of records, newest first; the last one may be short.
        """
        cursor: str | None = None
        left = limit
        while left > 0:
            content = self._get(
                ROUTE_INFERENCES,
                limit=min(page_size, left, PAGE_MAX),
                since=since.isoformat() if since else None,
                labelled=None if labelled is None else str(labelled).lower(),
                before=cursor,
            )
            page = msgspec.json.decode(content, type=InferencePage)
            records, cursor = page.records, page.next_cursor
            del content, page  # while suspended, the generator holds this page's records and nothing else
            left -= len(records)
            if records:
                yield records
            del records  # the next request starts without this page: the caller keeps it only if it wants to
            if cursor is None:
                return

    def outcomes(self, *, bucket_seconds: int | None = None) -> Outcomes:
        """Outcome counts per arm of the current experiment, with latency in time buckets of this width."""
        return msgspec.json.decode(self._get(ROUTE_EXPERIMENT_OUTCOMES, bucket_seconds=bucket_seconds), type=Outcomes)

    def _send(self, method: str, path: str, body: msgspec.Struct | None = None) -> bytes:
        content = msgspec.json.encode(body) if body is not None else None
        headers = {"content-type": "application/json", **self._admin}
        response = self._http.request(method, path, content=content, headers=headers)
        response.raise_for_status()
        return response.content

    def experiment(self) -> Experiment:
        """The router's current experiment."""
        return msgspec.json.decode(self._get(ROUTE_EXPERIMENT), type=Experiment)

    def set_plan(self, plan: ExperimentPlan) -> Experiment:
        """Store the plan of the experiment of `plan.challenger_version` (it also sets the split)."""
        return msgspec.json.decode(self._send("PUT", ROUTE_EXPERIMENT_PLAN, plan), type=Experiment)

    def end_experiment(self, end: ExperimentEnd) -> Experiment:
        """Mark the experiment ended with its decision; the router reloads the aliases."""
        return msgspec.json.decode(self._send("POST", ROUTE_EXPERIMENT_END, end), type=Experiment)

    def pause_experiment(self, pause: ExperimentPause) -> Experiment:
        """Pause the experiment of this challenger (the champion serves everyone; the challenger keeps its alias)."""
        return msgspec.json.decode(self._send("POST", ROUTE_EXPERIMENT_PAUSE, pause), type=Experiment)

    def resume_experiment(self, resume: ExperimentPause) -> Experiment:
        """Resume the paused experiment of this challenger."""
        return msgspec.json.decode(self._send("POST", ROUTE_EXPERIMENT_RESUME, resume), type=Experiment)

    def set_split(self, ab_split_b: float) -> RouterConfig:
        """Change the share of users sent to the challenger."""
        return msgspec.json.decode(
            self._send("POST", ROUTE_CONFIG, ConfigUpdate(ab_split_b=ab_split_b)), type=RouterConfig
        )

    def health(self) -> Health:
        """Which versions the router serves (`/health` is 503 `no_model` without a champion: not an error here)."""
        response = self._http.get(ROUTE_HEALTH)
        if response.status_code not in (200, 503):
            response.raise_for_status()
        return msgspec.json.decode(response.content, type=Health)

    def reload_models(self) -> Health:
        """Make the router re-read the registry aliases now."""
        response = self._http.post(ROUTE_MODELS_RELOAD, headers=self._admin)
        response.raise_for_status()
        return msgspec.json.decode(response.content, type=Health)
