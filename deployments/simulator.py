"""Traffic simulator: many users call the router over HTTP, first from the reference distribution, then drifted."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

import httpx
import numpy as np
import pandas as pd

from contracts.api import IDEMPOTENCY_HEADER, ROUTE_FEEDBACK, ROUTE_PREDICT
from contracts.auth import bearer

SCENARIOS = ("scale", "shift", "none")


def apply_drift(
    frame: pd.DataFrame, *, scenario: str, columns: list[str], factor: float, reference: pd.DataFrame
) -> pd.DataFrame:
    """Change the named columns as a production incident would (labels stay the truth).

    Args:
        frame: Rows to change (a copy is returned).
        scenario: `scale` multiplies by `factor` (a unit change upstream), `shift` adds `factor` reference standard
            deviations (a miscalibrated sensor), `none` leaves the rows alone.
        columns: Columns to change.
        factor: Strength of the change.
        reference: Data that defines the standard deviations for `shift`.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown drift scenario {scenario!r}: choose one of {', '.join(SCENARIOS)}")
    missing = sorted(set(columns) - set(frame.columns))
    if missing:
        raise ValueError(f"drift columns not in the data: {', '.join(missing)}")
    out = frame.copy()
    for column in columns if scenario != "none" else []:
        if scenario == "scale":
            out[column] = out[column] * factor
        else:
            out[column] = out[column] + factor * reference[column].std()
    return out


def sample_rows(
    reference: pd.DataFrame, n: int, rng: np.random.Generator, *, target: str, jitter: float = 0.05
) -> pd.DataFrame:
    """Draw rows from the reference with a little noise on numeric features, so no two requests are identical."""
    rows = reference.sample(n=n, replace=True, random_state=rng.integers(2**31)).reset_index(drop=True)
    for column in rows.columns:
        if column != target and pd.api.types.is_float_dtype(rows[column]):
            rows[column] = rows[column] + rng.normal(0, jitter * reference[column].std(), size=n)
    return rows


@dataclass
class TrafficStats:
    """What the simulator sent and what came back."""

    sent: int = 0
    ok: int = 0
    failed: int = 0
    labelled_inline: int = 0
    labelled_later: int = 0
    arms: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


class UserStream:
    """Who sends the next requests: users with a geometric number of requests each, interleaved, each drawing
    mostly from their own part of the data (so one user's requests are alike: per-user heterogeneity).

    `active` users are live at a time; a user who sent their last request is replaced by a new one.
    """

    def __init__(
        self, rng: np.random.Generator, *, active: int, mean_requests: float, classes: list[object], affinity: float
    ) -> None:
        self.rng = rng
        self.mean_requests = mean_requests
        self.classes = classes
        self.affinity = affinity
        self.next_id = 0
        self.pool: list[list] = [self._new() for _ in range(active)]

    def _new(self) -> list:
        """[user id, requests left, preferred class]."""
        self.next_id += 1
        left = int(self.rng.geometric(1 / self.mean_requests))
        return [f"user-{self.next_id:06d}", left, self.classes[int(self.rng.integers(len(self.classes)))]]

    @property
    def started(self) -> int:
        """Users that have started so far."""
        return self.next_id

    def take(self, n: int) -> list[tuple[str, object | None]]:
        """The next `n` (user, preferred class or None) pairs; None: this request is drawn from all the data."""
        out = []
        for _ in range(n):
            slot = int(self.rng.integers(len(self.pool)))
            user = self.pool[slot]
            prefers = user[2] if self.rng.random() < self.affinity else None
            out.append((user[0], prefers))
            user[1] -= 1
            if user[1] <= 0:
                self.pool[slot] = self._new()
        return out


class Simulator:
    """Sends prediction requests at a steady rate for a stream of users, labelling a share of them.

    Users send a geometric number of requests each (mean `mean_requests`), mostly drawn from their own class of the
    data (`affinity`), so requests of one user are correlated as real users' are. Labels arrive inline or later:
    a later label is posted after an exponential delay (mean `label_delay_seconds`, at most `label_delay_max_seconds`).
    Labels need the router's label token (`token`); every prediction carries an idempotency key, so a retry after a
    timeout or a 503 is counted once.
    """

    def __init__(
        self,
        router_url: str,
        reference: pd.DataFrame,
        *,
        target: str,
        users: int,
        rate: float,
        label_share: float,
        seed: int,
        concurrency: int = 16,
        token: str | None = None,
        mean_requests: float = 5.0,
        affinity: float = 0.7,
        label_delay_seconds: float = 0.0,
        label_delay_max_seconds: float = 120.0,
    ):
        self.router_url = router_url
        self.headers = bearer(token)
        self.reference = reference
        self.target = target
        self.rate = rate
        self.label_share = label_share
        self.rng = np.random.default_rng(seed)
        self.concurrency = concurrency
        self.stats = TrafficStats()
        self.label_delay_seconds = label_delay_seconds
        self.label_delay_max_seconds = label_delay_max_seconds
        self.by_class = {label: group for label, group in reference.groupby(target)}
        self.stream = UserStream(
            self.rng, active=users, mean_requests=mean_requests, classes=list(self.by_class), affinity=affinity
        )
        self._labels: set[asyncio.Task] = set()

    def batch(self, n: int, *, drift: dict | None, prefers: list[object | None] | None = None) -> pd.DataFrame:
        """The next `n` rows to send, drifted by `drift` (keyword arguments of `apply_drift`) when given.

        `prefers[i]` names the class row i is drawn from (None: the whole reference).
        """
        if prefers is None or all(p is None for p in prefers):
            rows = sample_rows(self.reference, n, self.rng, target=self.target)
        else:
            parts = [
                sample_rows(self.reference if p is None else self.by_class[p], 1, self.rng, target=self.target)
                for p in prefers
            ]
            rows = pd.concat(parts, ignore_index=True)
            # The jitter of one-row samples is set by the reference's spread, as for whole batches.
        return apply_drift(rows, reference=self.reference, **drift) if drift else rows

    async def _label_later(self, client: httpx.AsyncClient, request_id: str, label: object) -> None:
        """Post a label after the simulated delay (labels of real traffic arrive seconds to minutes later)."""
        if self.label_delay_seconds > 0:
            delay = min(float(self.rng.exponential(self.label_delay_seconds)), self.label_delay_max_seconds)
            await asyncio.sleep(delay)
        try:
            feedback = await client.post(ROUTE_FEEDBACK, json={"request_id": request_id, "label": label})
            feedback.raise_for_status()
            self.stats.labelled_later += 1
        except httpx.HTTPError as exc:
            self.stats.failed += 1
            if len(self.stats.errors) < 20:
                detail = exc.response.text[:300] if isinstance(exc, httpx.HTTPStatusError) else repr(exc)
                self.stats.errors.append(detail)

    async def _one(self, client: httpx.AsyncClient, user: str, row: dict, label_mode: str) -> None:
        label = row.pop(self.target)
        label = label.item() if hasattr(label, "item") else label
        body = {
            "user_id": user,
            "features": {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()},
        }
        if label_mode == "inline":
            body["label"] = label
        self.stats.sent += 1
        try:
            response = await self._predict(client, body)
            served = response.json()
            self.stats.ok += 1
            self.stats.arms[served["arm"]] = self.stats.arms.get(served["arm"], 0) + 1
            if label_mode == "inline":
                self.stats.labelled_inline += 1
            elif label_mode == "later":
                task = asyncio.create_task(self._label_later(client, served["request_id"], label))
                self._labels.add(task)
                task.add_done_callback(self._labels.discard)
        except httpx.HTTPError as exc:
            self.stats.failed += 1
            if len(self.stats.errors) < 20:
                detail = exc.response.text[:300] if isinstance(exc, httpx.HTTPStatusError) else repr(exc)
                self.stats.errors.append(detail)

    @staticmethod
    async def _predict(client: httpx.AsyncClient, body: dict) -> httpx.Response:
        """POST /predict; one retry with the same idempotency key when the store was busy (503)."""
        headers = {IDEMPOTENCY_HEADER: uuid.uuid4().hex}
        response = await client.post(ROUTE_PREDICT, json=body, headers=headers)
        if response.status_code == 503 and "retry-after" in response.headers:
            await asyncio.sleep(min(float(response.headers["retry-after"]), 5.0))
            response = await client.post(ROUTE_PREDICT, json=body, headers=headers)
        response.raise_for_status()
        return response

    async def run(
        self, *, requests: int | None = None, drift: dict | None = None, stop: asyncio.Event | None = None
    ) -> TrafficStats:
        """Send `requests` requests (or until `stop` is set) at the configured rate."""
        semaphore = asyncio.Semaphore(self.concurrency)
        pending: set[asyncio.Task] = set()
        start, sent = time.monotonic(), 0
        async with httpx.AsyncClient(base_url=self.router_url, timeout=10, headers=self.headers) as client:
            while (requests is None or sent < requests) and not (stop and stop.is_set()):
                n = 32 if requests is None else min(32, requests - sent)
                who = self.stream.take(n)
                rows = self.batch(n, drift=drift, prefers=[p for _, p in who]).to_dict("records")
                users = [u for u, _ in who]
                modes = self.rng.choice(
                    ["inline", "later", "none"],
                    size=n,
                    p=[self.label_share / 2, self.label_share / 2, 1 - self.label_share],
                )
                for row, user, mode in zip(rows, users, modes, strict=True):
                    # Hold the pace: request k leaves at start + k / rate.
                    delay = start + sent / self.rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if stop and stop.is_set():
                        break
                    await semaphore.acquire()
                    task = asyncio.create_task(self._one(client, str(user), row, str(mode)))
                    task.add_done_callback(lambda _t: semaphore.release())
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    sent += 1
            if pending:
                await asyncio.gather(*pending)
            if self._labels:
                # Late labels still in flight: wait for them (at most their longest delay), the client must stay open.
                await asyncio.wait(set(self._labels), timeout=self.label_delay_max_seconds + 10)
        return self.stats
