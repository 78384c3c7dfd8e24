"""The outbox against a real Prefect server: the API is down when sample_reached is due, then back; it arrives once."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from contracts.api import ExperimentPlan
from contracts.events import EXPERIMENT_SAMPLE_REACHED, RESOURCE_PREFIX
from serving.app import create_app, refresh_once
from serving.services.assignment import assign_arm
from serving.services.events import emit_prefect_event
from serving.services.store import Store
from tests.conftest import read_events
from tests.serving.conftest import IRIS_ROW, PLAN, free_port
from tests.serving.stubs import StubSource

pytestmark = pytest.mark.slow


def plan(**changes: object) -> ExperimentPlan:
    values = PLAN | {"min_samples_per_arm": 2, "fixed_horizon_samples_per_arm": 2, "ab_split_b": 0.5}
    return msgspec.convert(values | changes, ExperimentPlan)


async def test_sample_reached_waits_for_the_prefect_api_and_arrives_once(prefect_harness, settings):  # noqa: F811
    from prefect.settings import PREFECT_API_URL, temporary_settings

    model_name = f"IrisOutbox{uuid.uuid4().hex[:8]}"
    source = StubSource(model_name, champion="1", challenger="2")
    source.plans["2"] = plan()
    settings = settings.model_copy(update={"model_name": model_name})
    app = create_app(settings, model_source=source, store=Store(settings.store_url()))  # the real Prefect emitter
    async with AsyncTestClient(app=app) as client:
        relay = app.state.relay
        for i in range(40):
            user = f"user-{i}"
            arm = assign_arm(user, salt=settings.assignment_salt, split_b=0.5, has_challenger=True)
            body = {"user_id": user, "features": IRIS_ROW, "label": "setosa"}
            assert (await client.post("/predict", json=body)).json()["arm"] == arm

        down = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there: connection refused
        with temporary_settings(updates={PREFECT_API_URL: down}):
            await refresh_once(app.state.experiments)  # due: queued in the outbox with the experiment's claim
            assert relay.run_once() == 0
            assert relay.run_once() == 0  # not due again before its backoff
        [pending] = app.state.store.outbox.all()
        assert (pending.event, pending.attempts, pending.sent_at) == (EXPERIMENT_SAMPLE_REACHED, 1, None)
        assert "ConnectError" in pending.last_error and "<uri>" not in pending.event_key

        # Prefect is back (the harness's URL); the backoff has passed.
        relay.clock = lambda: datetime.now(UTC) + timedelta(seconds=5)
        assert relay.run_once() == 1
        assert relay.run_once() == 0
        await refresh_once(app.state.experiments)  # sample reached was claimed once: nothing new is queued
        assert relay.run_once() == 0
        assert app.state.store.outbox.pending() == 0

    resource_id = f"{RESOURCE_PREFIX}{model_name}"
    [event] = read_events(resource_id, [EXPERIMENT_SAMPLE_REACHED], expect=1)
    assert str(event.id) == pending.event_id
    assert event.payload["experiment_id"] == "v1-vs-v2"

    # A replica that crashed after sending but before marking it sent would send it again: same id, one event.
    emit_prefect_event(
        event=pending.event,
        resource=pending.resource,
        related=pending.related,
        payload=pending.payload,
        event_id=pending.event_id,
    )
    time.sleep(1.5)  # longer than the harness's persister flush
    assert len(read_events(resource_id, [EXPERIMENT_SAMPLE_REACHED], expect=2, timeout=2)) == 1
