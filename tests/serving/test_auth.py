"""Who may call what: every write and protected read with no token, a wrong one, the other kinds, and the right one."""

import pytest
from litestar.testing import AsyncTestClient

import serving.__main__ as entry
from serving.security import check_bind, is_json, is_loopback
from tests.serving.conftest import IRIS_ROW, PLAN, TOKENS, auth

WRITES = [
    ("POST", "/config", {"ab_split_b": 0.3}),
    ("PUT", "/experiment/plan", PLAN),
    ("POST", "/experiment/end", {"challenger_version": "2", "decision": "ROLLBACK", "reason": "r"}),
    ("POST", "/experiment/pause", {"challenger_version": "2", "reason": "r"}),
    ("POST", "/experiment/resume", {"challenger_version": "2", "reason": "r"}),
    ("POST", "/models/reload", None),
]
READS = [("GET", "/inferences", None), ("GET", "/experiment/outcomes", None)]
LABELS = [
    ("POST", "/feedback", {"request_id": "0" * 32, "label": "setosa"}),
    ("POST", "/predict", {"user_id": "u", "features": IRIS_ROW, "label": "setosa"}),
]
# Which token each group needs, and which tokens it also accepts.
MATRIX = [(route, "admin", {"admin"}) for route in WRITES]
MATRIX += [(route, "read", {"admin", "read"}) for route in READS]
MATRIX += [(route, "label", {"admin", "label"}) for route in LABELS]
OPEN = [("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics"), ("GET", "/config"), ("GET", "/experiment")]


async def call(client, method, path, body, headers=None):
    return await client.request(method, path, json=body, headers=headers or {})


@pytest.fixture
async def guarded(make_app, secured):
    async with AsyncTestClient(app=make_app(settings=secured)) as client:
        yield client


@pytest.mark.parametrize("route,scope,accepted", MATRIX, ids=[f"{r[0]} {r[1]}" for r, _, _ in MATRIX])
async def test_auth_matrix(guarded, route, scope, accepted):
    method, path, body = route
    missing = await call(guarded, method, path, body)
    assert missing.status_code == 401, missing.text
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["detail"].startswith("this needs a bearer token for ")
    assert f"DRIFTLOOP_ROUTER_{scope.upper()}_TOKEN" in missing.json()["detail"]

    for headers in ({"Authorization": "Bearer not-a-token"}, {"Authorization": f"Basic {TOKENS['admin']}"}):
        wrong = await call(guarded, method, path, body, headers)
        assert wrong.status_code == (403 if headers["Authorization"].startswith("Bearer") else 401), wrong.text

    for kind in TOKENS:
        response = await call(guarded, method, path, body, auth(kind))
        if kind in accepted:
            assert response.status_code not in (401, 403), (kind, response.text)
        else:
            assert response.status_code == 403, (kind, response.text)
            assert response.json()["detail"].startswith("the token sent does not grant")
        # A token never shows up in an answer.
        assert not any(token in response.text for token in TOKENS.values())


@pytest.mark.parametrize("method,path", OPEN)
async def test_open_endpoints_need_no_token(guarded, method, path):
    assert (await guarded.request(method, path)).status_code == 200


async def test_predictions_are_open_but_inline_labels_are_not(guarded):
    assert (await guarded.post("/predict", json={"user_id": "u", "features": IRIS_ROW})).status_code == 200
    labelled = {"user_id": "u", "features": IRIS_ROW, "label": "setosa"}
    assert (await guarded.post("/predict", json=labelled)).status_code == 401
    assert (await guarded.post("/predict", json=labelled, headers=auth("read"))).status_code == 403
    assert (await guarded.post("/predict", json=labelled, headers=auth("label"))).status_code == 200
    outcomes = (await guarded.get("/experiment/outcomes", headers=auth("read"))).json()
    assert sum(a["requests"] for a in outcomes["arms"]) == 2  # the refused ones wrote nothing
    assert sum(a["labelled"] for a in outcomes["arms"]) == 1


async def test_a_client_token_closes_predictions(make_app, secured):
    settings = secured.model_copy(update={"router_client_token": "client-secret"})
    async with AsyncTestClient(app=make_app(settings=settings)) as client:
        body = {"user_id": "u", "features": IRIS_ROW}
        assert (await client.post("/predict", json=body)).status_code == 401
        assert (await client.post("/predict", json=body, headers=auth("read"))).status_code == 403
        ok = {"Authorization": "Bearer client-secret"}
        assert (await client.post("/predict", json=body, headers=ok)).status_code == 200
        assert (await client.post("/predict", json=body, headers=auth("label"))).status_code == 200
        labelled = {**body, "label": "setosa"}
        assert (await client.post("/predict", json=labelled, headers=ok)).status_code == 403


@pytest.mark.parametrize(
    "method,path,body", [*WRITES, *LABELS, ("POST", "/predict", {"user_id": "u", "features": IRIS_ROW})]
)
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_bodies_that_are_not_json_are_415(guarded, method, path, body, content_type):
    """A web page can POST text/plain to localhost without a CORS preflight; Litestar would decode it as JSON."""
    import json

    content = json.dumps(body or {"x": 1}).encode()
    headers = {**auth("admin"), **({"content-type": content_type} if content_type else {})}
    response = await guarded.request(method, path, content=content, headers=headers)
    assert response.status_code == 415, response.text
    assert "the body must be JSON" in response.json()["detail"]


async def test_without_tokens_the_router_is_open_but_still_json_only(client):
    assert (await client.post("/config", json={"ab_split_b": 0.3})).status_code == 200
    plain = await client.post("/config", content=b'{"ab_split_b": 0.0}', headers={"content-type": "text/plain"})
    assert plain.status_code == 415
    assert (await client.get("/config")).json() == {"ab_split_b": 0.3}


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "application/merge-patch+json"]
)
def test_json_media_types(content_type):
    assert is_json(content_type)
    assert not is_json("text/plain") and not is_json(None) and not is_json("application/jsonp")


def test_a_non_loopback_bind_needs_an_admin_token(settings):
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert is_loopback(host)
        check_bind(host, settings)
    for host in ("0.0.0.0", "::", "192.168.1.10", "router.example"):
        assert not is_loopback(host)
        with pytest.raises(SystemExit, match=f"refusing to bind {host}.*DRIFTLOOP_ROUTER_ADMIN_TOKEN"):
            check_bind(host, settings)
        check_bind(host, settings.model_copy(update={"router_admin_token": TOKENS["admin"]}))


def test_main_refuses_before_serving(settings, monkeypatch):
    monkeypatch.setattr(entry, "get_settings", lambda: settings.model_copy(update={"router_host": "0.0.0.0"}))
    monkeypatch.setattr(entry.uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn must not start"))
    with pytest.raises(SystemExit):
        entry.main()


def test_tokens_come_from_a_secrets_file(tmp_path, monkeypatch):
    from serving.settings import RouterSettings

    secrets = tmp_path / "secrets.env"
    secrets.write_text("DRIFTLOOP_ROUTER_ADMIN_TOKEN=from-file\nDRIFTLOOP_ROUTER_READ_TOKEN=read-from-file\n")
    monkeypatch.setenv("DRIFTLOOP_SECRETS_FILE", str(secrets))
    monkeypatch.setenv("DRIFTLOOP_ROUTER_READ_TOKEN", "read-from-env")
    settings = RouterSettings(_env_file=None)
    assert settings.router_admin_token.get_secret_value() == "from-file"
    assert settings.router_read_token.get_secret_value() == "read-from-env"  # the environment wins
    assert "from-file" not in repr(settings)
