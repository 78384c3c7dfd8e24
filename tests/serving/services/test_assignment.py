"""Arm assignment is a pure, deterministic function of (salt, user_id) and the split."""

import pytest

from serving.services.assignment import assign_arm, bucket

USERS = [f"user-{i}" for i in range(2000)]


def test_bucket_is_deterministic_and_in_unit_interval():
    first = [bucket(u, "s") for u in USERS]
    assert first == [bucket(u, "s") for u in USERS]
    assert all(0.0 <= b < 1.0 for b in first)


def test_salt_reshuffles_users():
    same = sum((bucket(u, "a") < 0.5) == (bucket(u, "b") < 0.5) for u in USERS)
    assert 800 < same < 1200  # independent halves agree about half the time


def test_salt_and_user_are_separated():
    assert bucket("bc", "a") != bucket("c", "ab")


@pytest.mark.parametrize("split", [0.1, 0.3, 0.5, 0.9])
def test_split_is_respected_over_2000_users(split):
    arms = [assign_arm(u, salt="s", split_b=split, has_challenger=True) for u in USERS]
    assert arms.count("challenger") / len(USERS) == pytest.approx(split, abs=0.04)


def test_split_zero_and_one_are_absolute():
    assert {assign_arm(u, salt="s", split_b=0.0, has_challenger=True) for u in USERS} == {"champion"}
    assert {assign_arm(u, salt="s", split_b=1.0, has_challenger=True) for u in USERS} == {"challenger"}


def test_no_challenger_means_champion():
    assert {assign_arm(u, salt="s", split_b=1.0, has_challenger=False) for u in USERS} == {"champion"}


def test_same_user_same_arm_and_monotone_in_split():
    # Raising the split only moves users champion -> challenger, never back.
    low = {u for u in USERS if assign_arm(u, salt="s", split_b=0.2, has_challenger=True) == "challenger"}
    high = {u for u in USERS if assign_arm(u, salt="s", split_b=0.6, has_challenger=True) == "challenger"}
    assert low < high
