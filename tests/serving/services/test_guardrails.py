"""Guardrail metrics per arm: model errors (recorded, answered with a 500), latency percentiles, confusion cells."""

from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient

from contracts.api import ArmOutcome, ConfusionCell, UserSums
from serving.services.store import InferenceRow, PredictionErrorRow, Store
from serving.services.store.tables import prediction_errors

SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
LARGE = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}


def user_sums(labelled: list[dict], failed_users: list[str] = ()) -> dict | None:
    """Per-user sums of scored requests (labelled ones, and failures as certain misses), recomputed by hand."""
    n: Counter[str] = Counter(r["user_id"] for r in labelled) + Counter(failed_users)
    x: Counter[str] = Counter(r["user_id"] for r in labelled if r["label"] == r["prediction"])
    if not n:
        return None
    return {
        "users": len(n),
        "sum_n": sum(n.values()),
        "sum_x": sum(x.values()),
        "sum_nn": sum(v * v for v in n.values()),
        "sum_xx": sum(v * v for v in x.values()),
        "sum_nx": sum(n[u] * x[u] for u in n),
    }


def without_span(arms: list[dict]) -> list[dict]:
    """The arms without their first and last request times (checked for order only)."""
    for arm in arms:
        first, last = arm.pop("first_request_at"), arm.pop("last_request_at")
        assert (first is None and last is None) or first <= last
    return arms


def expected_arm(records: list[dict], arm: str, version: str, errors: int = 0) -> dict:
    """What /experiment/outcomes should say about one arm, recomputed from the inference log."""
    mine = [r for r in records if r["arm"] == arm]
    labelled = [r for r in mine if r["label"] is not None]
    latencies = [r["latency_ms"] for r in mine]
    cells = Counter((r["label"], r["prediction"]) for r in labelled)
    return {
        "arm": arm,
        "model_version": version,
        "requests": len(mine),
        "labelled": len(labelled),
        "correct": sum(r["label"] == r["prediction"] for r in labelled),
        "incorrect": sum(r["label"] != r["prediction"] for r in labelled),
        "errors": errors,
        "users": len({r["user_id"] for r in mine}),
        "labelled_users": len({r["user_id"] for r in labelled}),
        "latency_p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
        "latency_p95_ms": float(np.percentile(latencies, 95)) if latencies else None,
        "confusion": [{"label": lb, "prediction": pr, "count": n} for (lb, pr), n in sorted(cells.items())],
        "user_sums": user_sums(labelled),
    }


async def test_a_failing_arm_answers_500_and_counts_its_errors(make_app, make_source, settings):
    source = make_source(champion="1", challenger="2")
    source.failing.add("2")
    failed: list[dict] = []
    async with AsyncTestClient(app=make_app(source=source)) as client:
        for i in range(40):
            labels = {"label": "setosa" if i % 3 else "versicolor"} if i % 2 else {}
            body = {"user_id": f"u{i}", "features": SETOSA if i % 4 else LARGE, **labels}
            response = await client.post("/predict", json=body)
            if response.status_code == 200:
                assert response.json()["arm"] == "champion"
                continue
            error = response.json()
            request_id = error["extra"]["request_id"]
            assert (response.status_code, error) == (
                500,
                {
                    "status_code": 500,
                    "detail": f"model Iris v2 (challenger arm) failed to predict: RuntimeError "
                    f"(request {request_id}; see the router log)",
                    "extra": {
                        "request_id": request_id,
                        "arm": "challenger",
                        "model_version": "2",
                        "experiment_id": "v1-vs-v2",
                    },
                },
            )
            failed.append({"request_id": request_id, "user_id": f"u{i}"})
        records = (await client.get("/inferences")).json()["records"]
        outcomes = (await client.get("/experiment/outcomes")).json()

    assert 5 < len(failed) < 35
    assert len(records) == 40 - len(failed)  # failures are not in the inference log...
    assert without_span(outcomes["arms"]) == [
        expected_arm(records, "champion", "1"),
        # ...but count against their arm, and so do their users (one request each here), in the primary metric too.
        {
            **expected_arm([], "challenger", "2"),
            "errors": len(failed),
            "users": len(failed),
            "user_sums": user_sums([], [f["user_id"] for f in failed]),
        },
    ]
    store = Store(settings.store_url())
    store.open()
    with store.db.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(prediction_errors).order_by(prediction_errors.c.ts))]
    store.close()
    assert [{k: v for k, v in r.items() if k != "ts"} for r in rows] == [
        {
            **f,
            "arm": "challenger",
            "model_name": "Iris",
            "model_version": "2",
            "experiment_id": "v1-vs-v2",
            "error": "RuntimeError: model artifact is corrupt",
            "idempotency_key": None,
        }
        for f in failed
    ]


async def test_outcomes_report_latency_percentiles_and_confusion_per_arm(client):
    for i in range(50):
        features = SETOSA if i % 3 else LARGE
        label = {"label": ["setosa", "versicolor", "virginica"][i % 3]} if i % 5 else {}
        assert (await client.post("/predict", json={"user_id": f"u{i}", "features": features, **label})).is_success
    records = (await client.get("/inferences")).json()["records"]
    arms = (await client.get("/experiment/outcomes")).json()["arms"]
    assert without_span(arms) == [expected_arm(records, "champion", "1"), expected_arm(records, "challenger", "2")]
    # Both arms saw every kind of cell: right, wrong, and the odd/even version's own wrong class.
    assert all(len(a["confusion"]) >= 3 for a in arms)


def sums(users: int, n: int, x: int, nn: int, xx: int, nx: int) -> UserSums:
    return UserSums(users=users, sum_n=n, sum_x=x, sum_nn=nn, sum_xx=xx, sum_nx=nx)


def test_store_aggregates_one_experiment_per_arm(store):
    now = datetime.now(UTC)

    def answered(i: int, arm: str, experiment_id: str, label: str | None, prediction: str, latency: float) -> None:
        store.log.record(
            InferenceRow(
                request_id=f"r{i}",
                ts=now,
                user_id=f"u{i}",
                arm=arm,
                model_name="Iris",
                model_version="1" if arm == "champion" else "2",
                experiment_id=experiment_id,
                features={},
                prediction=prediction,
                label=label,
                latency_ms=latency,
            )
        )

    def failed(i: int, arm: str, experiment_id: str) -> None:
        store.log.record_error(
            PredictionErrorRow(
                request_id=f"e{i}",
                ts=now,
                user_id=f"u{i}",
                arm=arm,
                model_name="Iris",
                model_version="2",
                experiment_id=experiment_id,
                error="x" * 10_000,
            )
        )

    # Champion: latencies 1..100 ms; labels b, a, none in turn; predictions a, a, b, b in turn.
    for i in range(100):
        label = ["b", "a", None][i % 3]
        answered(i, "champion", "v1-vs-v2", label, "a" if i % 4 < 2 else "b", float(i + 1))
    # Challenger: only failures. Another experiment: ignored.
    for i in range(3):
        failed(i, "challenger", "v1-vs-v2")
    answered(1000, "champion", "v1", "a", "a", 1e6)
    failed(1000, "champion", "v1")

    labelled_pairs = Counter((["b", "a", None][i % 3], "a" if i % 4 < 2 else "b") for i in range(100) if i % 3 != 2)
    correct = labelled_pairs[("a", "a")] + labelled_pairs[("b", "b")]
    assert store.log.outcomes("v1-vs-v2") == {
        "champion": ArmOutcome(
            arm="champion",
            model_version="1",
            requests=100,
            labelled=67,
            correct=labelled_pairs[("a", "a")] + labelled_pairs[("b", "b")],
            incorrect=labelled_pairs[("a", "b")] + labelled_pairs[("b", "a")],
            errors=0,
            users=100,
            labelled_users=67,
            latency_p50_ms=50.5,
            latency_p95_ms=pytest.approx(95.05),
            confusion=[
                ConfusionCell(label=label, prediction=prediction, count=labelled_pairs[(label, prediction)])
                for label, prediction in (("a", "a"), ("a", "b"), ("b", "a"), ("b", "b"))
            ],
            user_sums=sums(67, 67, correct, 67, correct, correct),  # one request per user
            first_request_at=now,
            last_request_at=now,
        ),
        "challenger": ArmOutcome(
            arm="challenger",
            model_version="2",
            requests=0,
            labelled=0,
            correct=0,
            incorrect=0,
            errors=3,
            users=3,
            user_sums=sums(3, 3, 0, 3, 0, 0),
            first_request_at=now,
            last_request_at=now,
        ),  # fmt: skip
    }
    assert labelled_pairs == {("b", "a"): 17, ("a", "a"): 17, ("b", "b"): 17, ("a", "b"): 16}
    assert store.log.labelled_per_arm("v1-vs-v2") == {"champion": 67}
    with store.db.engine.connect() as conn:
        lengths = conn.execute(sa.select(sa.func.length(prediction_errors.c.error))).scalars().all()
    assert set(lengths) == {4000}  # long error texts are cut


def test_user_sums_count_users_with_several_requests_and_failures_as_misses(store):
    """Per user n = labelled + failed requests, x = correct ones; per arm the sums of n, x, n^2, x^2 and n x."""
    now = datetime.now(UTC)
    # (user, label, prediction): u1 three labelled (2 right), u2 one unlabelled and one right, u3 only a failure.
    answered = [("u1", "a", "a"), ("u1", "a", "b"), ("u1", "b", "b"), ("u2", None, "a"), ("u2", "a", "a")]
    for i, (user, label, prediction) in enumerate(answered):
        store.log.record(
            InferenceRow(
                request_id=f"r{i}", ts=now, user_id=user, arm="challenger", model_name="Iris", model_version="2",
                experiment_id="v1-vs-v2", features={}, prediction=prediction, label=label, latency_ms=1.0,
            )
        )  # fmt: skip
    for i, user in enumerate(["u3", "u1"]):
        store.log.record_error(
            PredictionErrorRow(
                request_id=f"e{i}", ts=now, user_id=user, arm="challenger", model_name="Iris", model_version="2",
                experiment_id="v1-vs-v2", error="boom",
            )
        )  # fmt: skip
    # n: u1 4 (3 labelled + 1 failure), u2 1, u3 1; x: u1 2, u2 1, u3 0.
    counts = store.log.outcomes("v1-vs-v2")["challenger"]
    assert counts.user_sums == sums(3, 6, 3, 16 + 1 + 1, 4 + 1 + 0, 8 + 1 + 0)
    assert (counts.users, counts.labelled_users, counts.errors) == (3, 2, 2)
