"""Fixtures of the automation tests: the session's Prefect test server, shared with tests/flows."""

from tests.flows.conftest import prefect_harness  # noqa: F401  (one server per session, see its docstring)
