"""The traffic heartbeat: the router reports what it logged each period, and nothing when it logged nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from litestar.testing import AsyncTestClient

from contracts.events import ROUTER_TRAFFIC
from serving.services.heartbeat import TrafficHeartbeat


async def test_the_heartbeat_counts_requests_since_the_last_beat(make_app, emitted, iris_row):
    app = make_app()
    now = [datetime.now(UTC)]
    async with AsyncTestClient(app=app) as client:
        beat = TrafficHeartbeat(
            store=app.state.store, emit=emitted, model_name="Iris", replica_id="r1", clock=lambda: now[0]
        )
        assert beat.beat() == 0 and emitted.events == []  # nothing logged: nothing sent
        for i in range(3):
            assert (await client.post("/predict", json={"user_id": f"u{i}", "features": iris_row})).status_code == 200
        now[0] += timedelta(seconds=60)
        assert beat.beat() == 3
        [event] = emitted.events
        assert event["event"] == ROUTER_TRAFFIC
        assert event["resource"]["prefect.resource.id"] == "driftloop.model.Iris"
        assert {k: event["payload"][k] for k in ("model_name", "requests", "replica_id")} == {
            "model_name": "Iris",
            "requests": 3,
            "replica_id": "r1",
        }
        now[0] += timedelta(seconds=60)
        assert beat.beat() == 0 and len(emitted.events) == 1  # a quiet period sends nothing


def test_a_heartbeat_that_cannot_be_sent_is_only_logged(caplog):
    class Store:
        class log:  # noqa: N801 - stands in for the store's attribute
            @staticmethod
            def count_since(since):
                return 5

    def down(**_: object) -> None:
        raise ConnectionError("prefect is down")

    beat = TrafficHeartbeat(store=Store(), emit=down, model_name="Iris", replica_id="r1")
    assert beat.beat() == 5
    assert "could not send the traffic heartbeat (5 requests): ConnectionError" in caplog.text
