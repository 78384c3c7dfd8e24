"""What assignment needs to know about the experiment being served: its secret salt and whether it is paused."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from contracts.api import experiment_id
from serving.services.models import ModelSet
from serving.services.store import Store


@dataclass(frozen=True)
class ArmState:
    """How users are assigned in the experiment being served."""

    salt: str
    paused: bool
    experiment_id: str
    """The id requests are logged under: the pair's, or the champion's alone while the experiment is paused (traffic
    served during a pause is no part of the comparison)."""


class ArmStates:
    """Reads the salt and the pause of the experiment being served, cached for `ttl` seconds. Blocking (store reads).

    The salt never changes once drawn; a pause or resume reaches every replica within `ttl`.
    """

    def __init__(
        self,
        store: Store,
        *,
        default_salt: str,
        fresh_salt: bool = True,
        ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Wire the cache.

        Args:
            store: Where experiments (and their salts) are kept.
            default_salt: The settings' salt: kept by experiments an older router stored without one.
            fresh_salt: Use each experiment's stored salt (False: `default_salt` for all).
            ttl: Seconds a read stays fresh.
            clock: Monotonic seconds.
        """
        self.store = store
        self.default_salt = default_salt
        self.fresh_salt = fresh_salt
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[str, tuple[float, ArmState]] = {}
        self._lock = threading.Lock()

    def of(self, current: ModelSet) -> ArmState:
        """The assignment state of the set serving (a champion alone: the settings' salt, never paused)."""
        assert current.experiment_id is not None
        if current.challenger_version is None or current.champion_version is None:
            return ArmState(self.default_salt, False, current.experiment_id)
        exp_id = current.experiment_id
        now = self.clock()
        with self._lock:
            cached = self._cache.get(exp_id)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        row = self.store.experiments.assignment(
            model_name=current.model_name,
            experiment_id=exp_id,
            champion_version=current.champion_version,
            challenger_version=current.challenger_version,
        )
        paused = row.paused_at is not None and row.ended_at is None
        salt = row.salt if self.fresh_salt and row.salt else self.default_salt
        state = ArmState(salt, paused, experiment_id(current.champion_version) if paused else exp_id)
        with self._lock:
            self._cache = {exp_id: (now, state)}
        return state
