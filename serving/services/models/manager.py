"""The champion/challenger set being served, and its refresh from the registry: each arm loads on its own."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from contracts.api import Arm, ExperimentPlan, experiment_id
from contracts.registry import CHALLENGER, CHAMPION
from serving.errors import ModelSourceError, NoModelLoaded, RouterError, redact
from serving.services.models.served import ServedModel

logger = logging.getLogger(__name__)


class SupportsModelSource(Protocol):
    """What the router needs from a model registry (MLflow in production, a stub in tests)."""

    model_name: str

    def open(self) -> None:
        """Acquire clients and scratch space."""

    def close(self) -> None:
        """Release what `open` acquired."""

    def resolve(self, alias: str) -> str | None:
        """The version an alias points to, or None when the alias is not set."""

    def load(self, version: str) -> ServedModel:
        """Load one version (cached by the source)."""

    def plan(self, version: str) -> ExperimentPlan | None:
        """The experiment plan in a version's tags, or None."""


@dataclass(frozen=True)
class ModelSet:
    """The champion and challenger served right now; replaced as a whole, never mutated.

    Attributes:
        model_name: Registered model name.
        champion: The version behind the `champion` alias, if any could be loaded.
        challenger: The version behind the `challenger` alias, if any could be loaded.
        problems: Why the set is not what the registry asks for (a version that does not load, an
            unreachable registry); empty when all is well.
    """

    model_name: str
    champion: ServedModel | None = None
    challenger: ServedModel | None = None
    problems: tuple[str, ...] = field(default=())

    @property
    def champion_version(self) -> str | None:
        """Version of the champion, if loaded."""
        return self.champion.version if self.champion else None

    @property
    def challenger_version(self) -> str | None:
        """Version of the challenger, if loaded."""
        return self.challenger.version if self.challenger else None

    @property
    def experiment_id(self) -> str | None:
        """`v{champion}` alone, `v{champion}-vs-v{challenger}` during an A/B test, None without a champion."""
        if self.champion is None:
            return None
        return experiment_id(self.champion.version, self.challenger.version if self.challenger else None)

    def for_arm(self, arm: Arm) -> ServedModel | None:
        """The model that serves an arm."""
        return self.champion if arm == CHAMPION else self.challenger

    def require_champion(self) -> None:
        """Raise the 503 a request gets while no champion is loaded.

        Raises:
            NoModelLoaded: No champion, with the reasons when known.
        """
        if self.champion is None:
            reasons = "; ".join(self.problems)
            raise NoModelLoaded(
                f"no model loaded: registered model {self.model_name!r} has no loadable {CHAMPION!r} alias"
                + (f" ({reasons})" if reasons else "")
                + " (see GET /health; POST /models/reload after setting it)"
            )

    def describe(self) -> str:
        """One human line: which versions serve."""
        champion, challenger = _v(self.champion_version), _v(self.challenger_version)
        return f"{self.model_name}: champion {champion}, challenger {challenger}"


def _v(version: str | None) -> str:
    return f"v{version}" if version else "none"


def public_reason(exc: BaseException) -> str:
    """What a client may read about a failure: our own messages, else only the exception's type.

    Registry and artifact errors quote hosts, ports, paths and sometimes credentials; the log has them.
    """
    if isinstance(exc, RouterError):
        return redact(exc.detail)[:300]
    return f"{type(exc).__name__} (details in the router log)"


class ModelManager:
    """Holds the current `ModelSet` and swaps it when the registry aliases move.

    Each arm loads on its own: a challenger that fails to load leaves the champion serving everyone, and a
    champion that fails to load leaves the previous set serving. A version that failed is tried again after
    `retry_seconds`, not at every refresh.
    """

    def __init__(
        self,
        source: SupportsModelSource,
        *,
        retry_seconds: float = 60.0,
        on_load_failure: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Start with nothing loaded.

        Args:
            source: Where versions are resolved and loaded.
            retry_seconds: Wait before loading a version that failed again.
            on_load_failure: Told the alias of every failed load (for the metric).
            clock: Monotonic seconds.
        """
        self.source = source
        self.retry_seconds = retry_seconds
        self.on_load_failure = on_load_failure
        self.clock = clock
        self._current = ModelSet(model_name=source.model_name)
        self._failed: dict[str, tuple[float, str]] = {}
        self._classes: dict[str, frozenset[str] | None] = {}
        self.last_refresh_ok: float | None = None
        """`clock()` of the last refresh that read the aliases."""
        # Serializes the periodic refresh and /models/reload; readers never take it.
        self._lock = threading.Lock()

    @property
    def current(self) -> ModelSet:
        """The set serving right now (an immutable snapshot: one request uses one set throughout)."""
        return self._current

    def _swap(self, new: ModelSet) -> ModelSet:
        previous = self._current
        self._current = new
        if (new.champion_version, new.challenger_version) != (previous.champion_version, previous.challenger_version):
            if previous.champion is None and previous.challenger is None:
                logger.info("models loaded: %s", new.describe())
            else:
                logger.info("models swapped: %s (was %s)", new.describe(), previous.describe())
        for problem in set(new.problems) - set(previous.problems):
            logger.warning("%s", problem)
        return new

    def _load(self, alias: str, version: str | None, previous: ModelSet) -> tuple[ServedModel | None, str | None]:
        """A version's model (reusing one already serving) and, when it could not be loaded, why."""
        if version is None:
            return None, None
        for served in (previous.champion, previous.challenger):
            if served is not None and served.version == version:
                return served, None
        failed = self._failed.get(version)
        if failed is not None and self.clock() - failed[0] < self.retry_seconds:
            return None, failed[1]
        try:
            served = self.source.load(version)
        except Exception as exc:
            reason = f"{alias} v{version} failed to load: {public_reason(exc)}"
            logger.error("%s: %s: %s", reason, type(exc).__name__, exc, exc_info=not isinstance(exc, RouterError))
            self._failed[version] = (self.clock(), reason)
            if self.on_load_failure is not None:
                self.on_load_failure(alias)
            return None, reason
        self._failed.pop(version, None)
        self._classes[version] = served.classes
        return served, None

    def refresh(self) -> ModelSet:
        """Re-read the aliases and swap in whatever they point to now. Blocking: call from a thread.

        Returns:
            The set serving after the refresh (with its problems, when an arm could not be loaded).

        Raises:
            ModelSourceError: The registry could not be read; the previous set keeps serving.
        """
        with self._lock:
            previous = self._current
            try:
                champion_v = self.source.resolve(CHAMPION)
                challenger_v = self.source.resolve(CHALLENGER)
            except Exception as exc:
                logger.error("could not read the aliases: %s: %s", type(exc).__name__, exc)
                reason = f"the registry could not be read: {public_reason(exc)}"
                self._swap(ModelSet(previous.model_name, previous.champion, previous.challenger, (reason,)))
                raise ModelSourceError(
                    f"could not refresh the {CHAMPION}/{CHALLENGER} aliases of {self.source.model_name}: "
                    f"{public_reason(exc)}"
                ) from exc
            self.last_refresh_ok = self.clock()
            # Both aliases on one version (mid-promotion) is not an experiment.
            if challenger_v == champion_v:
                challenger_v = None
            champion, champion_problem = self._load(CHAMPION, champion_v, previous)
            if champion_problem is not None and previous.champion is not None:
                # A new champion that does not load: keep serving the whole previous set.
                kept = f"{champion_problem}; still serving {previous.describe()}"
                return self._swap(ModelSet(previous.model_name, previous.champion, previous.challenger, (kept,)))
            problems = [] if champion_problem is None else [champion_problem]
            challenger, challenger_problem = self._load(CHALLENGER, challenger_v, previous)
            if challenger_problem is not None:
                problems.append(f"{challenger_problem}; the champion serves every user")
            if champion is None and champion_v is None:
                problems.append(f"no {CHAMPION} alias on {self.source.model_name}: /predict answers 503")
            if champion is None:
                challenger = None  # a challenger alone is no experiment, and there is nothing to compare it to
            return self._swap(ModelSet(self.source.model_name, champion, challenger, tuple(problems)))

    def classes(self, version: str) -> frozenset[str] | None:
        """The classes of a version this process loaded (labels may arrive after it stopped serving); None: unknown."""
        for served in (self._current.champion, self._current.challenger):
            if served is not None and served.version == version:
                return served.classes
        return self._classes.get(version)

    def wait_idle(self) -> None:
        """Block until no refresh is running (call before closing the source)."""
        with self._lock:
            pass
