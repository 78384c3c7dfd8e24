"""The Postgres profile's pieces without the whole stack: nginx in front of two upstreams (the real binary), the
replicas the stack would start, and the server databases it creates and resets."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import sqlalchemy as sa

from deployments import databases, proxy
from deployments.settings import StackSettings
from deployments.stack import Stack, StackError
from tests.postgres import ADMIN_URL, require_server, with_driver


class Echo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = str(self.server.server_address[1]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def upstream() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_nginx_balances_over_both_replicas_and_skips_one_that_is_down(tmp_path):
    try:
        binary = proxy.find_nginx("nginx")
    except proxy.ProxyNotFound as exc:
        pytest.skip(str(exc))
    a, b = upstream(), upstream()
    port = free_port()
    ports = [a.server_address[1], b.server_address[1]]
    config = proxy.write_config(listen_port=port, upstream_ports=ports, prefix=tmp_path)
    check = subprocess.run([binary, "-t", "-p", str(tmp_path), "-c", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen(proxy.nginx_command(binary, config, tmp_path), stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            served = {client.get("/").text for _ in range(20)}
            assert served == {str(p) for p in ports}
            a.shutdown()
            a.server_close()
            after = [client.get("/") for _ in range(20)]
        assert {r.status_code for r in after} == {200}
        assert {r.text for r in after} == {str(ports[1])}
    finally:
        process.terminate()
        process.wait(timeout=10)
        b.shutdown()


def test_without_nginx_the_message_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(proxy, "NGINX_CANDIDATES", ())
    with pytest.raises(proxy.ProxyNotFound, match="apt-get install -y nginx"):
        proxy.find_nginx("no-such-nginx")


def test_two_replicas_listen_on_the_next_ports_behind_the_proxy(tmp_path, monkeypatch):
    settings = StackSettings(_env_file=None, home=tmp_path, router_port=18000, router_replicas=2)
    monkeypatch.setattr(proxy, "find_nginx", lambda configured: "/usr/sbin/nginx")
    services = Stack(settings)._routers()
    assert [(s.name, s.port, s.env) for s in services] == [
        ("router-1", 18001, {"DRIFTLOOP_ROUTER_PORT": "18001"}),
        ("router-2", 18002, {"DRIFTLOOP_ROUTER_PORT": "18002"}),
        ("proxy", 18000, {}),
    ]
    conf = (tmp_path / "nginx" / "nginx.conf").read_text()
    assert "server 127.0.0.1:18001" in conf and "server 127.0.0.1:18002" in conf and "listen 127.0.0.1:18000" in conf
    one = Stack(StackSettings(_env_file=None, home=tmp_path, router_port=18000))._routers()
    assert [(s.name, s.port) for s in one] == [("router", 18000)]


def test_a_missing_proxy_stops_the_stack_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(proxy, "NGINX_CANDIDATES", ())
    settings = StackSettings(_env_file=None, home=tmp_path, router_replicas=2, nginx_binary="no-such-nginx")
    with pytest.raises(StackError, match="nginx not found"):
        Stack(settings)._routers()


def test_server_databases_are_created_when_missing_and_reset_on_request(tmp_path):
    require_server()
    name = f"driftloop_test_{uuid.uuid4().hex[:12]}"
    url = with_driver(sa.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False), "asyncpg")
    try:
        assert databases.ensure([url, f"sqlite:///{tmp_path / 'x.db'}", None]) == [
            f"created database {name} on 127.0.0.1:5432"
        ]
        assert databases.ensure([url]) == []  # there already
        engine = sa.create_engine(with_driver(url, "psycopg"))
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE leftover (x int)"))
        engine.dispose()
        assert databases.ensure([url], reset=True) == [f"created database {name} on 127.0.0.1:5432"]
        engine = sa.create_engine(with_driver(url, "psycopg"))
        with engine.connect() as conn:
            assert sa.inspect(conn).get_table_names() == []
        engine.dispose()
    finally:
        with databases._admin(sa.make_url(url)) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
