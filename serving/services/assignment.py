"""Deterministic A/B arm assignment: a user's bucket depends only on the salt and the user id."""

from __future__ import annotations

import hashlib

from contracts.api import Arm
from contracts.registry import CHALLENGER, CHAMPION

_BUCKET_BITS = 64


def bucket(user_id: str, salt: str) -> float:
    """Map a user to a stable point in [0, 1).

    Args:
        user_id: The user to place.
        salt: Experiment salt; a different salt reshuffles every user.

    Returns:
        A float uniform in [0, 1) over users, identical across processes and restarts.
    """
    # A NUL separator keeps ("ab", "c") and ("a", "bc") apart; sha256 rather than hash() because
    # Python's str hash is randomized per process and replicas must agree.
    digest = hashlib.sha256(salt.encode() + b"\x00" + user_id.encode()).digest()
    return int.from_bytes(digest[: _BUCKET_BITS // 8], "big") / 2**_BUCKET_BITS


def assign_arm(user_id: str, *, salt: str, split_b: float, has_challenger: bool) -> Arm:
    """Choose the arm that serves a user.

    Args:
        user_id: The user to assign.
        salt: Experiment salt.
        split_b: Share of users (0..1) sent to the challenger.
        has_challenger: Whether a challenger is loaded; without one every user gets the champion.

    Returns:
        `"challenger"` when the user's bucket is below `split_b` and a challenger exists, else `"champion"`.
    """
    if has_challenger and bucket(user_id, salt) < split_b:
        return CHALLENGER
    return CHAMPION
