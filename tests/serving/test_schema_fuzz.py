"""Schemathesis against the router's own OpenAPI schema: every operation, bounded examples, with tokens.

No answer may be a 5xx, and every answer must conform to what the schema documents (status, content type,
body). The router runs as a real process over HTTP, with stub models.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from contracts.auth import TOKEN_ENV
from tests.serving.conftest import TOKENS, LiveRouter, auth
from tests.serving.stubs import StubSource

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("DRIFTLOOP_FUZZ_EXAMPLES", "100"))
"""Examples per operation (100 in CI; set fewer for a quick local run)."""


@pytest.fixture(scope="module")
def fuzzed_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRouter]:
    home: Path = tmp_path_factory.mktemp("fuzz")
    env = {TOKEN_ENV[kind]: token for kind, token in TOKENS.items()} | {"DRIFTLOOP_OUTBOX_INTERVAL_SECONDS": "0"}
    router = LiveRouter(home=home, env=env).start()
    yield router
    router.stop()


def _operations() -> list[tuple[str, str]]:
    """(method, path) of every operation, read from the app's schema without starting it."""
    from serving.app import create_app
    from serving.settings import RouterSettings

    spec = create_app(RouterSettings(_env_file=None), model_source=StubSource("Iris")).openapi_schema.to_schema()
    return [(method.upper(), path) for path, item in spec["paths"].items() for method in item]


@pytest.fixture(scope="module")
def router_schema(fuzzed_router: LiveRouter):
    return schemathesis.openapi.from_url(f"{fuzzed_router.url}/schema/openapi.json")


CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.parametrize("method,path", _operations())
def test_every_operation_answers_as_documented(router_schema, fuzzed_router, method, path):
    operation = router_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    def answers_as_documented(case):
        # The admin token grants every scope, so each request gets past its guard and into its validation.
        response = case.call(base_url=fuzzed_router.url, headers=auth("admin"), timeout=30)
        case.validate_response(response, checks=CHECKS, headers=auth("admin"))

    answers_as_documented()
