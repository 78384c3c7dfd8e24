"""Readiness of one replica: the store takes a write, a champion serves, and the aliases were read recently."""

from __future__ import annotations

import time
from collections.abc import Callable

from contracts.api import Readiness, ReadyCheck
from serving.errors import RouterError
from serving.services.models import ModelManager
from serving.services.store import Store


def check_ready(
    *,
    store: Store,
    models: ModelManager,
    replica_id: str,
    max_refresh_age: float | None,
    clock: Callable[[], float] = time.monotonic,
) -> Readiness:
    """Run every readiness check (blocking: it writes to the store).

    Args:
        store: The store that must take a write.
        models: The set that must have a champion, and the time of its last alias read.
        replica_id: This process, for its heartbeat row.
        max_refresh_age: Seconds within which the aliases must have been read; None when the router does
            not refresh on its own (the check then only needs one successful read).
        clock: Monotonic seconds (the clock of `models.last_refresh_ok`).
    """
    checks: list[ReadyCheck] = []
    try:
        store.db.heartbeat(replica_id)
        checks.append(ReadyCheck(name="store", ok=True, detail="the store took a write"))
    except RouterError as exc:
        checks.append(ReadyCheck(name="store", ok=False, detail=exc.detail))
    current = models.current
    checks.append(
        ReadyCheck(name="models", ok=current.champion is not None, detail=current.describe())
        if current.champion is not None
        else ReadyCheck(name="models", ok=False, detail="; ".join(current.problems) or "no champion loaded")
    )
    last = models.last_refresh_ok
    if last is None:
        checks.append(ReadyCheck(name="refresh", ok=False, detail="the aliases were never read"))
    else:
        age = clock() - last
        fresh = max_refresh_age is None or age <= max_refresh_age
        limit = "" if max_refresh_age is None else f" (limit {max_refresh_age:.0f} s)"
        checks.append(ReadyCheck(name="refresh", ok=fresh, detail=f"aliases read {age:.1f} s ago{limit}"))
    return Readiness(ready=all(c.ok for c in checks), checks=checks)
