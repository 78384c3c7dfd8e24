"""The local stack's guards: taken ports and dead processes give clear errors."""

import socket
import sys
import time
from pathlib import Path

import pytest

from deployments.settings import StackSettings
from deployments.stack import Service, Stack, StackError, port_is_free


def test_a_taken_port_is_reported_with_the_setting_to_change(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not port_is_free(port)
        stack = Stack(StackSettings(home=tmp_path), log=lambda _m: None)
        service = Service("router", [sys.executable, "-c", "pass"], port, None, tmp_path / "router.log")
        with pytest.raises(StackError, match=f"port {port} for router is taken.*DRIFTLOOP_ROUTER_PORT"):
            stack._spawn(service)


def test_a_dead_process_is_reported_with_its_log(tmp_path):
    stack = Stack(StackSettings(home=tmp_path), log=lambda _m: None)
    service = Service(
        "mlflow",
        [sys.executable, "-c", "print('boom'); raise SystemExit(3)"],
        None,
        "http://127.0.0.1:9/health",
        tmp_path / "mlflow.log",
    )
    stack._spawn(service)
    service.process.wait(timeout=30)
    with pytest.raises(StackError, match=r"(?s)mlflow exited with code 3.*boom"):
        stack._wait_healthy(service)
    stack.stop()


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path):
    stack = Stack(StackSettings(home=tmp_path), log=lambda _m: None)
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    service = Service("worker", [sys.executable, "-c", code], None, None, tmp_path / "w.log", kill_grace_seconds=0.5)
    stack._spawn(service)
    deadline = time.monotonic() + 30
    while "up" not in service.log_tail():
        assert time.monotonic() < deadline, service.log_tail()
        time.sleep(0.05)
    stack.stop()
    assert service.process.returncode == -9


def test_the_stack_generates_private_tokens_and_hands_them_to_every_child(tmp_path):
    from dotenv import dotenv_values

    from contracts.auth import SECRETS_FILE_ENV, TOKEN_ENV
    from deployments.stack import ensure_secrets

    stack = Stack(StackSettings(home=tmp_path), log=lambda _m: None)
    env = stack.env()
    path = Path(env[SECRETS_FILE_ENV])
    assert path == tmp_path.resolve() / "secrets.env"
    assert path.stat().st_mode & 0o777 == 0o600
    stored = dotenv_values(path)
    assert set(stored) == {TOKEN_ENV["admin"], TOKEN_ENV["label"], TOKEN_ENV["read"]}
    assert len(set(stored.values())) == 3 and all(len(v) >= 40 for v in stored.values())
    assert stack.tokens == {kind: stored[TOKEN_ENV[kind]] for kind in ("admin", "label", "read")}
    # The same tokens on the next start (a kept state), and a file made readable is made private again.
    path.chmod(0o644)
    assert ensure_secrets(path) == stack.tokens
    assert path.stat().st_mode & 0o777 == 0o600


def test_every_child_reads_the_tokens_from_the_secrets_file(tmp_path, monkeypatch):
    from flows.settings import FlowSettings
    from serving.settings import RouterSettings

    stack = Stack(StackSettings(home=tmp_path), log=lambda _m: None)
    env = stack.env()
    for key in [k for k in list(__import__("os").environ) if k.startswith("DRIFTLOOP_ROUTER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("DRIFTLOOP_SECRETS_FILE", env["DRIFTLOOP_SECRETS_FILE"])
    router, flows = RouterSettings(_env_file=None), FlowSettings(_env_file=None)
    for kind in ("admin", "label", "read"):
        assert getattr(router, f"router_{kind}_token").get_secret_value() == stack.tokens[kind]
        assert getattr(flows, f"router_{kind}_token").get_secret_value() == stack.tokens[kind]
