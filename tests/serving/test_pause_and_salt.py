"""Each experiment draws its own secret salt; a paused experiment sends everyone to the champion, logged apart."""

import pytest
import sqlalchemy as sa
from litestar.testing import AsyncTestClient

from serving.services.assignment import assign_arm
from serving.services.store import Store
from serving.services.store.tables import experiments
from tests.serving.conftest import IRIS_ROW, auth

USERS = [f"user-{i}" for i in range(200)]


async def arms_of(client) -> dict[str, str]:
    """The arm each of `USERS` is served by."""
    served = {}
    for user in USERS:
        response = await client.post("/predict", json={"user_id": user, "features": IRIS_ROW})
        assert response.status_code == 200, response.text
        served[user] = response.json()["arm"]
    return served


def stored_salt(settings, experiment_id: str) -> str | None:
    store = Store(settings.store_url())
    store.open()
    try:
        row = store.experiments.get(experiment_id)
        return None if row is None else row.salt
    finally:
        store.close()


async def test_every_experiment_draws_its_own_secret_salt(make_app, make_source, settings):
    fresh = settings.model_copy(update={"fresh_salt_per_experiment": True})
    source = make_source(champion="1", challenger="2")
    async with AsyncTestClient(app=make_app(source=source, settings=fresh)) as client:
        first = await arms_of(client)
        source.aliases = {"champion": "1", "challenger": "3"}
        await client.post("/models/reload")
        second = await arms_of(client)
        outcome = (await client.get("/experiment")).json()
        assert "salt" not in outcome  # secret: never in an answer
    salts = stored_salt(settings, "v1-vs-v2"), stored_salt(settings, "v1-vs-v3")
    assert all(s is not None and len(s) == 32 for s in salts) and salts[0] != salts[1]
    # Each experiment assigns by its own salt, not the settings' one...
    assert first == {u: assign_arm(u, salt=salts[0], split_b=0.5, has_challenger=True) for u in USERS}
    assert second == {u: assign_arm(u, salt=salts[1], split_b=0.5, has_challenger=True) for u in USERS}
    # ...so the two experiments reshuffle users (the same split would put ~50% in a different arm).
    moved = sum(first[u] != second[u] for u in USERS)
    assert 60 < moved < 140


async def test_an_experiment_stored_without_a_salt_keeps_the_settings_salt(make_app, settings):
    fresh = settings.model_copy(update={"fresh_salt_per_experiment": True})
    store = Store(settings.store_url())
    store.open()
    store.experiments.assignment(model_name="Iris", experiment_id="v1-vs-v2", champion_version="1",
                                 challenger_version="2")  # fmt: skip
    with store.db.begin("test") as conn:  # as an older router stored it
        conn.execute(sa.update(experiments).values(salt=None))
    store.close()
    async with AsyncTestClient(app=make_app(settings=fresh)) as client:
        served = await arms_of(client)
    assert served == {u: assign_arm(u, salt="test-salt", split_b=0.5, has_challenger=True) for u in USERS}


async def test_pause_sends_everyone_to_the_champion_apart_from_the_experiment_and_resume_restores(
    make_app, secured, emitted
):
    admin = auth("admin")
    async with AsyncTestClient(app=make_app(settings=secured)) as client:
        body = {"challenger_version": "2", "reason": "SRM at look 3"}
        assert (await client.post("/experiment/pause", json=body)).status_code == 401
        before = await arms_of(client)
        assert set(before.values()) == {"champion", "challenger"}

        paused = await client.post("/experiment/pause", json=body, headers=admin)
        assert paused.status_code == 200, paused.text
        assert (paused.json()["status"], paused.json()["pause_reason"]) == ("paused", "SRM at look 3")
        again = await client.post("/experiment/pause", json={**body, "reason": "again"}, headers=admin)
        assert again.json()["pause_reason"] == "SRM at look 3"  # the first pause stands
        app = client.app
        app.state.predictor.arm_states.ttl = 0  # no wait for the cache in the test
        responses = [
            (await client.post("/predict", json={"user_id": u, "features": IRIS_ROW})).json() for u in USERS[:50]
        ]
        assert {(r["arm"], r["model_version"], r["experiment_id"]) for r in responses} == {("champion", "1", "v1")}
        health = (await client.get("/health")).json()
        assert health["challenger_version"] == "2"  # the challenger keeps its alias and stays loaded
        outcomes = (await client.get("/experiment/outcomes", headers=auth("read"))).json()
        assert sum(a["requests"] for a in outcomes["arms"]) == len(USERS)  # paused traffic is not in it

        resumed = await client.post("/experiment/resume", json={**body, "reason": "looked fine"}, headers=admin)
        assert resumed.status_code == 200 and resumed.json()["status"] == "running"
        assert await arms_of(client) == before

        wrong = await client.post("/experiment/pause", json={**body, "challenger_version": "9"}, headers=admin)
        assert wrong.status_code == 409 and "not under test" in wrong.json()["detail"]
        empty = await client.post("/experiment/pause", json={**body, "reason": ""}, headers=admin)
        assert empty.status_code == 400


@pytest.mark.parametrize("action", ["pause", "resume"])
async def test_an_ended_experiment_cannot_be_paused_or_resumed(make_app, make_source, action):
    source = make_source(champion="1", challenger="2")
    async with AsyncTestClient(app=make_app(source=source)) as client:
        ended = await client.post(
            "/experiment/end", json={"challenger_version": "2", "decision": "ROLLBACK", "reason": "worse"}
        )
        assert ended.status_code == 200
        response = await client.post(f"/experiment/{action}", json={"challenger_version": "2", "reason": "r"})
        assert response.status_code == 409
