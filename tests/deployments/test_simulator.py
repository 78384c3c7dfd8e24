"""Drift scenarios of the traffic simulator."""

import httpx
import numpy as np
import pandas as pd
import pytest

from deployments.simulator import UserStream, apply_drift, sample_rows
from tests.serving.conftest import live_router  # noqa: F401  (a router process with stub models)

REFERENCE = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": [10.0, 20.0, 30.0, 40.0], "y": ["p", "q", "p", "q"]})


def test_scale_multiplies_only_the_named_columns():
    out = apply_drift(REFERENCE, scenario="scale", columns=["a"], factor=2.0, reference=REFERENCE)
    pd.testing.assert_frame_equal(out, REFERENCE.assign(a=[2.0, 4.0, 6.0, 8.0]))


def test_shift_adds_reference_standard_deviations():
    out = apply_drift(REFERENCE, scenario="shift", columns=["b"], factor=1.0, reference=REFERENCE)
    pd.testing.assert_series_equal(out["b"], REFERENCE["b"] + REFERENCE["b"].std())


def test_none_changes_nothing():
    pd.testing.assert_frame_equal(
        apply_drift(REFERENCE, scenario="none", columns=["a"], factor=9, reference=REFERENCE), REFERENCE
    )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"scenario": "melt", "columns": ["a"]}, "unknown drift scenario 'melt'"),
        ({"scenario": "scale", "columns": ["zz"]}, "drift columns not in the data: zz"),
    ],
)
def test_bad_scenarios_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        apply_drift(REFERENCE, factor=2, reference=REFERENCE, **kwargs)


def test_samples_keep_labels_and_jitter_features():
    rows = sample_rows(REFERENCE, 200, np.random.default_rng(0), target="y")
    assert list(rows.columns) == ["a", "b", "y"]
    assert set(rows["y"]) <= {"p", "q"}
    assert rows["a"].nunique() == 200


async def test_the_simulator_labels_with_its_token_against_a_live_router(live_router):  # noqa: F811
    from deployments.simulator import Simulator
    from tests.serving.conftest import TOKENS, auth

    router = live_router(DRIFTLOOP_OUTBOX_INTERVAL_SECONDS="0")
    reference = pd.DataFrame(
        {
            "sepal_length": [5.1, 6.2, 5.9] * 10,
            "sepal_width": [3.5, 2.9, 3.0] * 10,
            "petal_length": [1.4, 4.3, 5.1] * 10,
            "petal_width": [0.2, 1.3, 1.8] * 10,
            "species": ["setosa", "versicolor", "virginica"] * 10,
        }
    )
    sim = Simulator(
        router.url, reference, target="species", users=20, rate=500, label_share=1.0, seed=1, token=TOKENS["label"]
    )
    stats = await sim.run(requests=40)
    assert (stats.ok, stats.failed, stats.labelled_inline + stats.labelled_later) == (40, 0, 40), stats.errors

    late = Simulator(
        router.url, reference, target="species", users=20, rate=500, label_share=1.0, seed=3, token=TOKENS["label"],
        label_delay_seconds=0.3, label_delay_max_seconds=1.0,
    )  # fmt: skip
    delayed = await late.run(requests=20)  # returns once the late labels arrived too
    assert delayed.labelled_later > 0 and delayed.labelled_inline + delayed.labelled_later == 20, delayed.errors
    stats.ok += delayed.ok
    outcomes = httpx.get(f"{router.url}/experiment/outcomes", headers=auth("read")).json()
    assert sum(a["labelled"] for a in outcomes["arms"]) == 60

    without = Simulator(router.url, reference, target="species", users=5, rate=500, label_share=1.0, seed=2)
    refused = await without.run(requests=4)
    assert refused.failed == 4 and "needs a bearer token" in refused.errors[0]


def test_users_send_a_geometric_number_of_requests_mostly_from_their_own_class():
    stream = UserStream(np.random.default_rng(4), active=50, mean_requests=5.0, classes=["p", "q", "r"], affinity=0.7)
    taken = stream.take(20_000)
    per_user: dict[str, int] = {}
    own: dict[str, set] = {}
    for user, prefers in taken:
        per_user[user] = per_user.get(user, 0) + 1
        if prefers is not None:
            own.setdefault(user, set()).add(prefers)
    finished = [n for user, n in per_user.items() if user not in {u[0] for u in stream.pool}]
    assert np.mean(finished) == pytest.approx(5.0, rel=0.1)  # geometric, mean 5
    assert max(finished) > 15  # with its long tail
    assert sum(p is not None for _, p in taken) / len(taken) == pytest.approx(0.7, abs=0.02)
    assert all(len(classes) == 1 for classes in own.values())  # each user has one class of their own
