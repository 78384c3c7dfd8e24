"""The local stack's guards: taken ports and dead processes give clear errors."""

import socket
import sys
import time

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
