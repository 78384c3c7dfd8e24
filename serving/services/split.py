"""The split in force, cached in memory: read from the store by the refresh loop, never on the request path."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from serving.services.store import Store


class SplitCache:
    """The challenger's share of users, shared by replicas through the store and cached here.

    The refresh loop calls `reload` with the alias refresh, so a `/config` change made on another replica reaches
    this one within one refresh interval; a change made on this replica is seen at once (`use`, `invalidate`).
    `get` reads the store itself only when the cache is older than `max_age` (always, with `max_age` 0: a router
    without a refresh loop reads the split for every batch).
    """

    def __init__(
        self, store: Store, *, default: float, max_age: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Start empty.

        Args:
            store: Holds the shared split.
            default: The split while the store holds none (settings).
            max_age: Seconds a cached value is used before `get` reads the store again.
            clock: Monotonic seconds.
        """
        self.store = store
        self.default = default
        self.max_age = max_age
        self.clock = clock
        self._value: float | None = None
        self._loaded_at: float | None = None
        self._lock = threading.Lock()

    def reload(self) -> float:
        """Read the split from the store now (blocking).

        Raises:
            StoreUnavailable: The store could not be read; the cached value is kept.
        """
        stored = self.store.config.get_split()
        value = self.default if stored is None else stored
        self.use(value)
        return value

    def use(self, value: float) -> None:
        """Take a value this replica just stored."""
        with self._lock:
            self._value, self._loaded_at = value, self.clock()

    def invalidate(self) -> None:
        """Forget the cached value: the next `get` reads the store."""
        with self._lock:
            self._loaded_at = None

    def get(self) -> float:
        """The split in force: the cached value while fresh, else read from the store (blocking)."""
        with self._lock:
            value, loaded_at = self._value, self._loaded_at
        if value is not None and loaded_at is not None and self.clock() - loaded_at < self.max_age:
            return value
        return self.reload()
