"""Micro-batching: concurrent requests gathered into one blocking call (one predict per arm, one group commit).

The event loop only queues requests and hands out answers. A thread of the batcher's own takes what is queued (after
an idle spell, waiting while the rest of a burst keeps arriving, up to a short window, so that a burst arriving
together travels together; a burst as large as the recent ones is complete, so it goes at once) and runs the batch
function; with a second stage (`commit`), a second thread commits each batch while the first one already works on
the next, and hands the outcomes back to the loop, which resolves each request's future with its own answer or its
own error. The threads pass batches to each other directly: no batch waits for the event loop between its stages,
and a batch costs one wake-up of each thread and one of the loop, whatever its size. The queue is bounded: a request
that finds it full is refused at once with a 503 and `Retry-After`, never left waiting without bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
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
    """Gathers queued items into batches for a blocking batch function run in a thread of its own.

    The batch function gets a list of items and returns one outcome per item, in order: a result, or an exception
    for that item alone. An exception raised by the function itself fails every item of the batch.
    """

    def __init__(
        self,
        process: Callable[[list[T]], Any],
        *,
        commit: Callable[[Any], Sequence[R | BaseException]] | None = None,
        window_seconds: float,
        quiet_seconds: float = 0.00025,
        burst_memory: int = 8,
        max_batch: int,
        max_queue: int,
        retry_after: int = 1,
        on_batch: Callable[[int], None] | None = None,
        name: str = "predict",
    ) -> None:
        """Describe the batcher; nothing runs until `start`.

        Args:
            process: The blocking batch function (called in the batcher's thread, one batch at a time).
            commit: A second blocking stage: `process` returns what it takes, and it returns the outcomes. The
                next batch's `process` then runs while the previous batch's `commit` does (one of each at a time,
                commits in batch order): a batch's predictions overlap the previous batch's commit.
            window_seconds: How long an idle batcher waits at most for more items after the first one arrives.
            quiet_seconds: It stops waiting sooner, once this long passes with no new item (the burst is over).
            burst_memory: It also stops once as many items wait as the largest of its last `burst_memory` batches
                taken after an idle spell: clients that wait for their answers (a closed loop) come back in bursts
                of the same size, and waiting for a quiet spell after the whole burst is in only adds latency.
                0: always wait for the quiet spell.
            max_batch: Most items in one batch.
            max_queue: Most items waiting; `submit` refuses more with `Overloaded` (503).
            retry_after: Seconds a refused client is told to wait.
            on_batch: Told the size of every batch (for the metric).
            name: For the log and the threads' names.
        """
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self.process = process
        self.commit = commit
        self.window_seconds = max(0.0, window_seconds)
        self.quiet_seconds = max(0.0, quiet_seconds)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.retry_after = retry_after
        self.on_batch = on_batch
        self.name = name
        self._queue: collections.deque[Job[T, R]] = collections.deque()
        self._lock = threading.Lock()
        self._queued = threading.Condition(self._lock)
        """Signalled when items are queued (or the batcher closes) while the first stage waits for them."""
        self._handover = threading.Condition(self._lock)
        """Signalled when a processed batch is handed to the commit stage, or taken by it."""
        self._staged: tuple[list[Job[T, R]], Any] | None = None
        """The processed batch waiting for its commit (at most one)."""
        self._processing_done = False
        self._waiting = False
        self._gather_until = 0
        """While the first stage gathers a burst after an idle spell: how many items complete it."""
        self._bursts: collections.deque[int] = collections.deque(maxlen=burst_memory)
        """Sizes of the last batches taken after an idle spell (none kept with `burst_memory` 0)."""
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []

    @property
    def depth(self) -> int:
        """Items waiting for a batch."""
        return len(self._queue)

    def start(self) -> None:
        """Start the batcher's threads; outcomes are handed to the running loop."""
        self._loop = asyncio.get_running_loop()
        self._closing = self._processing_done = False
        self._staged = None
        stages = [("batcher", self._process_loop)]
        if self.commit is not None:
            stages.append(("commit", self._commit_loop))
        self._threads = [
            threading.Thread(target=run, name=f"driftloop-{self.name}-{what}", daemon=True) for what, run in stages
        ]
        for thread in self._threads:
            thread.start()

    async def close(self) -> None:
        """Stop taking items, answer every item already queued, then stop the threads."""
        with self._lock:
            self._closing = True
            self._queued.notify_all()
        threads, self._threads = self._threads, []
        for thread in threads:
            await anyio.to_thread.run_sync(thread.join)
        # The threads' last answers were handed to the loop before they ended: let them arrive.
        await asyncio.sleep(0)

    async def run(self, item: T) -> R:
        """Queue one item and wait for its outcome.

        Raises:
            Overloaded: The queue is full, or the batcher is not running.
            Exception: The item's own error.
        """
        [future] = self.submit([item])
        return await future

    def submit(self, items: Sequence[T]) -> list[asyncio.Future[R]]:
        """Queue items together (all or none), returning one future per item. Call on the event loop.

        Raises:
            Overloaded: There is no room for all of them, or the batcher is not running.
        """
        if not self._threads or self._closing or self._loop is None:
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
        create = self._loop.create_future
        jobs = [Job(item, create()) for item in items]
        with self._lock:
            self._queue.extend(jobs)
            # Wake the first stage only when it waits for a first item, or for a burst now complete: one wake-up per
            # batch, not per item.
            if self._waiting or 0 < self._gather_until <= len(self._queue):
                self._queued.notify()
        return [job.future for job in jobs]

    def _take(self) -> list[Job[T, R]] | None:
        """The next batch (waiting for items, and the window after an idle spell); None once closed and drained."""
        with self._lock:
            if not self._queue:
                if self._closing:
                    return None
                self._waiting = True
                while not self._queue and not self._closing:
                    self._queued.wait()
                self._waiting = False
                idle = True
            else:
                idle = False
        # Idle until now: give the rest of a burst a short window to join this batch, but stop waiting as soon as a
        # short spell passes with no new arrival (the burst is over).
        if idle and self.window_seconds:
            deadline = time.monotonic() + self.window_seconds
            with self._lock:
                # `submit` wakes this thread once that many wait (a batch never exceeds max_batch).
                self._gather_until = max(self._bursts, default=self.max_batch)
                queued = len(self._queue)
                while queued < self._gather_until and not self._closing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._queued.wait(min(self.quiet_seconds, left))
                    if len(self._queue) == queued:
                        break
                    queued = len(self._queue)
                self._gather_until = 0
        with self._lock:
            if not self._queue:
                return None if self._closing else []
            jobs = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
        if idle:
            self._bursts.append(len(jobs))
        return jobs

    def _process_loop(self) -> None:
        try:
            self._process_all()
        except BaseException:
            # Never leave requests waiting on a dead thread: refuse new ones (503) and fail the queued ones.
            logger.exception("%s batcher crashed; refusing new requests", self.name)
            with self._lock:
                self._closing = True
                jobs, self._queue = list(self._queue), collections.deque()
            self._hand_back(jobs, [RuntimeError(f"the {self.name} batcher stopped")] * len(jobs))
        finally:
            with self._lock:
                self._processing_done = True
                self._handover.notify_all()

    def _process_all(self) -> None:
        while (jobs := self._take()) is not None:
            if not jobs:
                continue
            try:
                staged = self.process([job.item for job in jobs])
            except Exception as exc:
                logger.exception("%s batch of %d failed as a whole", self.name, len(jobs))
                self._hand_back(jobs, [exc] * len(jobs))
                continue
            if self.commit is None:
                self._finish(jobs, staged, "batch function")
                continue
            with self._lock:
                while self._staged is not None:  # one commit at a time: wait until the last batch is taken
                    self._handover.wait()
                self._staged = (jobs, staged)
                self._handover.notify_all()

    def _commit_loop(self) -> None:
        assert self.commit is not None
        while True:
            with self._lock:
                while self._staged is None and not self._processing_done:
                    self._handover.wait()
                if self._staged is None:
                    return
                (jobs, staged), self._staged = self._staged, None
                self._handover.notify_all()
            try:
                outcomes: Sequence[Any] = self.commit(staged)
            except Exception as exc:
                logger.exception("%s batch of %d failed as a whole", self.name, len(jobs))
                outcomes = [exc] * len(jobs)
            self._finish(jobs, outcomes, "commit")

    def _finish(self, jobs: list[Job[T, R]], outcomes: Sequence[Any], what: str) -> None:
        if len(outcomes) != len(jobs):
            error = RuntimeError(f"{what} returned {len(outcomes)} outcomes for {len(jobs)} items")
            logger.error("%s batch of %d failed as a whole: %s", self.name, len(jobs), error)
            outcomes = [error] * len(jobs)
        if self.on_batch is not None:
            with contextlib.suppress(Exception):
                self.on_batch(len(jobs))
        self._hand_back(jobs, outcomes)

    def _hand_back(self, jobs: list[Job[T, R]], outcomes: Sequence[Any]) -> None:
        """Resolve the jobs' futures on the loop (one wake-up of the loop per batch)."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._resolve, jobs, outcomes)
        except RuntimeError:  # the loop is closed: nobody waits for these answers any more
            logger.warning("%s batch of %d answered after its event loop closed", self.name, len(jobs))

    @staticmethod
    def _resolve(jobs: list[Job[T, R]], outcomes: Sequence[Any]) -> None:
        for job, outcome in zip(jobs, outcomes, strict=True):
            if job.future.done():  # the client went away; its record (if any) is in the store all the same
                continue
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)
