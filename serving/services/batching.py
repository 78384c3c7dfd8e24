"""Micro-batching: concurrent requests gathered into one blocking call (one predict per arm, one group commit).

The event loop only queues requests and hands out answers; a single collector task takes what is queued (waiting a
short window when it was idle, so that a burst arriving together travels together), runs the batch in a worker
thread and resolves each request's future with its own answer or its own error. The queue is bounded: a request
that finds it full is refused at once with a 503 and `Retry-After`, never left waiting without bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio

from serving.errors import Overloaded

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)
class Job(Generic[T, R]):
    """One queued request and the future its handler awaits.

    Attributes:
        item: What the batch function gets for this request.
        future: Resolved with the request's own result or error.
    """

    item: T
    future: asyncio.Future[R] = field(repr=False)


class MicroBatcher(Generic[T, R]):
    """Gathers queued items into batches for a blocking batch function run in a worker thread.

    The batch function gets a list of items and returns one outcome per item, in order: a result, or an exception
    for that item alone. An exception raised by the function itself fails every item of the batch.
    """

    def __init__(
        self,
        process: Callable[[list[T]], Any],
        *,
        commit: Callable[[Any], Sequence[R | BaseException]] | None = None,
        window_seconds: float,
        max_batch: int,
        max_queue: int,
        retry_after: int = 1,
        on_batch: Callable[[int], None] | None = None,
        name: str = "predict",
    ) -> None:
        """Describe the batcher; nothing runs until `start`.

        Args:
            process: The blocking batch function (called in a worker thread, one batch at a time).
            commit: A second blocking stage: `process` returns what it takes, and it returns the outcomes. The
                next batch's `process` then runs while the previous batch's `commit` does (one of each at a time,
                commits in batch order): a batch's predictions overlap the previous batch's commit.
            window_seconds: How long an idle collector waits for more items after the first one arrives.
            max_batch: Most items in one batch.
            max_queue: Most items waiting; `submit` refuses more with `Overloaded` (503).
            retry_after: Seconds a refused client is told to wait.
            on_batch: Told the size of every batch (for the metric).
            name: For the log and the collector task.
        """
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self.process = process
        self.commit = commit
        self.window_seconds = max(0.0, window_seconds)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.retry_after = retry_after
        self.on_batch = on_batch
        self.name = name
        self._queue: collections.deque[Job[T, R]] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def depth(self) -> int:
        """Items waiting for a batch."""
        return len(self._queue)

    def start(self) -> None:
        """Start the collector task on the running loop."""
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._collect(), name=f"driftloop-{self.name}-batcher")

    async def close(self) -> None:
        """Stop taking items, answer every item already queued, then stop the collector."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def run(self, item: T) -> R:
        """Queue one item and wait for its outcome.

        Raises:
            Overloaded: The queue is full, or the batcher is not running.
            Exception: The item's own error.
        """
        [future] = self.submit([item])
        return await future

    def submit(self, items: Sequence[T]) -> list[asyncio.Future[R]]:
        """Queue items together (all or none), returning one future per item.

        Raises:
            Overloaded: There is no room for all of them, or the batcher is not running.
        """
        if self._task is None or self._closing or self._wake is None:
            raise Overloaded(
                f"the router is not taking {self.name} requests right now (starting or stopping); retry",
                headers={"Retry-After": str(self.retry_after)},
            )
        if len(self._queue) + len(items) > self.max_queue:
            raise Overloaded(
                f"the router is at capacity ({len(self._queue)} {self.name} requests queued, limit "
                f"{self.max_queue}); retry in {self.retry_after} s",
                headers={"Retry-After": str(self.retry_after)},
            )
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[R]] = []
        for item in items:
            future: asyncio.Future[R] = loop.create_future()
            self._queue.append(Job(item, future))
            futures.append(future)
        self._wake.set()
        return futures

    async def _collect(self) -> None:
        assert self._wake is not None
        committing: asyncio.Task[None] | None = None
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    # Idle until now: give the rest of a burst a short window to join this batch.
                    if self.window_seconds and len(self._queue) < self.max_batch and not self._closing:
                        await asyncio.sleep(self.window_seconds)
                    continue
                jobs = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
                if self.commit is None:
                    await self._run(jobs)
                    continue
                staged = await self._stage(jobs)
                if committing is not None:
                    await committing  # one commit at a time, in batch order
                    committing = None
                if staged is not None:
                    committing = asyncio.create_task(self._commit(jobs, staged[0]))
        finally:
            if committing is not None:
                await committing

    async def _stage(self, jobs: list[Job[T, R]]) -> tuple[Any] | None:
        """The first stage in a worker thread; on failure every job gets the error and None is returned."""
        try:
            return (await anyio.to_thread.run_sync(self.process, [job.item for job in jobs]),)
        except Exception as exc:
            logger.exception("%s batch of %d failed as a whole", self.name, len(jobs))
            self._resolve(jobs, [exc] * len(jobs))
            return None

    async def _commit(self, jobs: list[Job[T, R]], staged: Any) -> None:
        assert self.commit is not None
        try:
            outcomes: Sequence[Any] = await anyio.to_thread.run_sync(self.commit, staged)
            if len(outcomes) != len(jobs):
                raise RuntimeError(f"commit returned {len(outcomes)} outcomes for {len(jobs)} items")
        except Exception as exc:
            logger.exception("%s batch of %d failed as a whole", self.name, len(jobs))
            outcomes = [exc] * len(jobs)
        if self.on_batch is not None:
            with contextlib.suppress(Exception):
                self.on_batch(len(jobs))
        self._resolve(jobs, outcomes)

    @staticmethod
    def _resolve(jobs: list[Job[T, R]], outcomes: Sequence[Any]) -> None:
        for job, outcome in zip(jobs, outcomes, strict=True):
            if job.future.done():  # the client went away; its record (if any) is in the store all the same
                continue
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    async def _run(self, jobs: list[Job[T, R]]) -> None:
        items = [job.item for job in jobs]
        started = time.perf_counter()
        try:
            outcomes: Sequence[Any] = await anyio.to_thread.run_sync(self.process, items)
            if len(outcomes) != len(jobs):
                raise RuntimeError(f"batch function returned {len(outcomes)} outcomes for {len(jobs)} items")
        except Exception as exc:
            logger.exception("%s batch of %d failed as a whole", self.name, len(jobs))
            outcomes = [exc] * len(jobs)
        if self.on_batch is not None:
            with contextlib.suppress(Exception):
                self.on_batch(len(jobs))
        logger.debug("%s batch of %d in %.2f ms", self.name, len(jobs), (time.perf_counter() - started) * 1000)
        self._resolve(jobs, outcomes)
