"""GET /experiment/outcomes counts and GET /inferences filters, and that records survive a restart."""

from collections import Counter
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
from litestar.testing import AsyncTestClient

from serving.services.assignment import assign_arm

SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
LARGE = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}
ARMS = ("champion", "challenger")


async def test_outcomes_count_what_was_posted(client):
    before = datetime.now(UTC)
    expected = {
        arm: {"requests": 0, "labelled": 0, "correct": 0, "incorrect": 0, "errors": 0, "users": 0, "labelled_users": 0}
        for arm in ARMS
    }
    cells: dict[str, Counter[tuple[str, str]]] = {arm: Counter() for arm in ARMS}
    for i in range(60):
        features = SETOSA if i % 2 else LARGE
        # Labels: inline for a third, by feedback for a third, none for the rest; "setosa" always.
        inline = {"label": "setosa"} if i % 3 == 0 else {}
        served = (await client.post("/predict", json={"user_id": f"u{i}", "features": features, **inline})).json()
        counts = expected[served["arm"]]
        counts["requests"] += 1
        counts["users"] += 1  # one request per user
        if i % 3 == 1:
            await client.post("/feedback", json={"request_id": served["request_id"], "label": "setosa"})
        if i % 3 in (0, 1):
            counts["labelled"] += 1
            counts["labelled_users"] += 1
            counts["correct" if served["prediction"] == "setosa" else "incorrect"] += 1
            cells[served["arm"]][("setosa", served["prediction"])] += 1
    records = (await client.get("/inferences")).json()["records"]
    for arm in ARMS:
        latencies = [r["latency_ms"] for r in records if r["arm"] == arm]
        expected[arm]["latency_p50_ms"] = float(np.percentile(latencies, 50))
        expected[arm]["latency_p95_ms"] = float(np.percentile(latencies, 95))
        expected[arm]["confusion"] = [
            {"label": label, "prediction": prediction, "count": n}
            for (label, prediction), n in sorted(cells[arm].items())
        ]

    # Latency per arm and one-second bucket, recomputed from the log the buckets summarise.
    grouped: dict[tuple[int, str], list[dict]] = {}
    for r in records:
        grouped.setdefault((int(datetime.fromisoformat(r["ts"]).timestamp()), r["arm"]), []).append(r)
    buckets = [
        {
            "start": datetime.fromtimestamp(second, UTC).isoformat().replace("+00:00", "Z"),
            "arm": arm,
            "requests": len(rows),
            "latency_p95_ms": float(np.percentile([r["latency_ms"] for r in rows], 95)),
            "compute_ms_median": float(np.median([r["compute_ms"] for r in rows])),
        }
        for (second, arm), rows in sorted(grouped.items())
    ]
    assert (await client.get("/experiment/outcomes?bucket_seconds=1")).json()["latency_buckets"] == buckets

    for counts in expected.values():  # one request per user: each labelled user has n = 1, x = 0 or 1
        n, x = counts["labelled"], counts["correct"]
        counts["user_sums"] = {"users": n, "sum_n": n, "sum_x": x, "sum_nn": n, "sum_xx": x, "sum_nx": x}
    outcomes = (await client.get("/experiment/outcomes")).json()
    for arm in outcomes["arms"]:
        assert (
            before
            <= datetime.fromisoformat(arm.pop("first_request_at"))
            <= datetime.fromisoformat(arm.pop("last_request_at"))
        )
    # The router started this experiment when its lifespan loaded the pair, before any request.
    assert before - timedelta(seconds=5) < datetime.fromisoformat(outcomes.pop("started_at")) <= before
    assert sum(b["requests"] for b in outcomes.pop("latency_buckets")) == len(records)
    assert outcomes == {
        "model_name": "Iris",
        "bucket_seconds": 60,
        "experiment_id": "v1-vs-v2",
        "champion_version": "1",
        "challenger_version": "2",
        "ab_split_b": 0.5,
        "plan": None,
        "shadow": None,
        "paused_at": None,
        "resumed_at": None,
        "arms": [
            {"arm": "champion", "model_version": "1", **expected["champion"]},
            {"arm": "challenger", "model_version": "2", **expected["challenger"]},
        ],
    }
    assert all(c["requests"] > 0 and c["correct"] > 0 and c["incorrect"] > 0 for c in expected.values())
    assert all(len(c["confusion"]) == 2 for c in expected.values())


async def test_outcomes_list_loaded_arms_with_zeros(client):
    arms = (await client.get("/experiment/outcomes")).json()["arms"]
    zero = {
        "requests": 0,
        "labelled": 0,
        "correct": 0,
        "incorrect": 0,
        "errors": 0,
        "users": 0,
        "labelled_users": 0,
        "latency_p50_ms": None,
        "latency_p95_ms": None,
        "confusion": [],
        "user_sums": None,
        "first_request_at": None,
        "last_request_at": None,
    }
    assert arms == [
        {"arm": "champion", "model_version": "1", **zero},
        {"arm": "challenger", "model_version": "2", **zero},
    ]


async def test_outcomes_only_count_the_current_experiment(make_app, source):
    async with AsyncTestClient(app=make_app()) as client:
        await client.post("/predict", json={"user_id": "u", "features": SETOSA, "label": "setosa"})
        source.aliases["challenger"] = "4"
        await client.post("/models/reload")
        outcomes = (await client.get("/experiment/outcomes")).json()
    assert outcomes["experiment_id"] == "v1-vs-v4"
    assert [a["requests"] for a in outcomes["arms"]] == [0, 0]


async def test_inferences_newest_first_with_limit_and_labelled_filter(client):
    ids = []
    for i in range(6):
        label = {"label": "setosa"} if i % 2 else {}
        ids.append(
            (await client.post("/predict", json={"user_id": f"u{i}", "features": SETOSA, **label})).json()["request_id"]
        )

    async def fetch(**params):
        return [r["request_id"] for r in (await client.get("/inferences", params=params)).json()["records"]]

    assert await fetch() == ids[::-1]
    assert await fetch(limit=2) == ids[:-3:-1]
    assert await fetch(labelled="true") == ids[1::2][::-1]
    assert await fetch(labelled="false") == ids[0::2][::-1]


async def test_inferences_since(client):
    await client.post("/predict", json={"user_id": "old", "features": SETOSA})
    cut = datetime.now(UTC)
    await client.post("/predict", json={"user_id": "new", "features": SETOSA})

    async def users(since):
        records = (await client.get("/inferences", params={"since": since})).json()["records"]
        return [r["user_id"] for r in records]

    assert await users(cut.isoformat()) == ["new"]
    # Other offsets and naive (UTC) timestamps mean the same instant.
    assert await users(cut.astimezone(UTC).replace(tzinfo=None).isoformat()) == ["new"]
    assert await users(cut.astimezone(timezone(timedelta(hours=2))).isoformat()) == ["new"]
    assert await users((cut + timedelta(hours=1)).isoformat()) == []
    assert await users((cut - timedelta(hours=1)).isoformat()) == ["new", "old"]


async def test_records_survive_a_restart(make_app):
    async with AsyncTestClient(app=make_app()) as client:
        served = (await client.post("/predict", json={"user_id": "u", "features": SETOSA})).json()
    # A new app (new engine, new process state) on the same database file.
    async with AsyncTestClient(app=make_app()) as client:
        records = (await client.get("/inferences")).json()["records"]
        assert [r["request_id"] for r in records] == [served["request_id"]]
        feedback = await client.post("/feedback", json={"request_id": served["request_id"], "label": "setosa"})
        assert feedback.json()["correct"] is True


def users_of(arm: str, n: int) -> list[str]:
    """The first `n` user ids the test salt assigns to an arm at a 50% split."""
    found = []
    for i in range(1000):
        if assign_arm(f"user-{i}", salt="test-salt", split_b=0.5, has_challenger=True) == arm:
            found.append(f"user-{i}")
        if len(found) == n:
            return found
    raise AssertionError(f"fewer than {n} users on {arm}")


async def test_outcomes_count_distinct_users_not_requests(client):
    # Three users make ten requests: two champion users (4 and 3 requests), one challenger user (3).
    alice, bob = users_of("champion", 2)
    (carol,) = users_of("challenger", 1)
    plan = [alice, bob, carol, alice, bob, carol, alice, bob, carol, alice]
    for i, user in enumerate(plan):
        # Only alice's first request and every one of carol's carry a label; bob never labels.
        label = {"label": "setosa"} if (user == alice and i == 0) or user == carol else {}
        response = await client.post("/predict", json={"user_id": user, "features": SETOSA, **label})
        assert response.status_code == 200
    arms = (await client.get("/experiment/outcomes")).json()["arms"]
    keys = ("arm", "requests", "labelled", "users", "labelled_users")
    assert [{k: a[k] for k in keys} for a in arms] == [
        {"arm": "champion", "requests": 7, "labelled": 1, "users": 2, "labelled_users": 1},
        {"arm": "challenger", "requests": 3, "labelled": 3, "users": 1, "labelled_users": 1},
    ]


async def test_outcomes_users_include_users_whose_requests_only_failed(make_app, make_source):
    source = make_source(champion="1", challenger="2")
    source.failing.add("2")
    (alice,) = users_of("champion", 1)
    carol, dave = users_of("challenger", 2)
    async with AsyncTestClient(app=make_app(source=source)) as client:
        for user in (alice, alice, carol, carol, dave):
            response = await client.post("/predict", json={"user_id": user, "features": SETOSA, "label": "setosa"})
            assert response.status_code == (200 if user == alice else 500)
        arms = (await client.get("/experiment/outcomes")).json()["arms"]
    keys = ("arm", "requests", "labelled", "errors", "users", "labelled_users")
    assert [{k: a[k] for k in keys} for a in arms] == [
        {"arm": "champion", "requests": 2, "labelled": 2, "errors": 0, "users": 1, "labelled_users": 1},
        # Failed requests are never labelled, but their users were assigned to the arm all the same.
        {"arm": "challenger", "requests": 0, "labelled": 0, "errors": 3, "users": 2, "labelled_users": 0},
    ]
