"""Router throughput through the reverse proxy: one and two replicas on PostgreSQL beside one on SQLite, in one run.

Each configuration starts its router processes (`tests.serving.live_router`: the real app, store, outbox and
assignment, with stub models that cost microseconds, so the figures are the router, its store and the proxy, not a
model), puts nginx in front (`deployments/proxy.py`, the profile's configuration), and drives it with wrk from
Debian's packages: POST /predict with the label inline (one logged, labelled request each), distinct user ids, for
`--seconds` at `--connections`. Every configuration gets the same load, one after the other; the machine's load
average is recorded beside the figures (compare ratios within one run, not figures across machines).

    uv run python -m bench.replicas [--seconds 20] [--connections 64] [--threads 16]
    uv run python -m bench.replicas --seconds 3 --connections 8     # a quick check

Needs wrk (`apt-get install -y wrk`), nginx (`apt-get install -y nginx`) and a PostgreSQL server
(`DRIFTLOOP_BENCH_POSTGRES_URL`, default postgresql://postgres@127.0.0.1:5432/postgres); writes
bench/results/replicas.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy.engine import make_url

from contracts.api import ROUTE_HEALTH, ROUTE_PREDICT
from deployments import databases, proxy

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "replicas.json"
ADMIN_URL = os.environ.get("DRIFTLOOP_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

# A labelled setosa-like flower per request from one of 5,000 users (the counter makes each body distinct).
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  local body = string.format(
    '{"user_id":"user-%d","features":{"sepal_length":5.1,"sepal_width":3.5,"petal_length":1.4,' ..
    '"petal_width":0.2},"label":"setosa"}', n % 5000)
  return wrk.format(nil, "{route}", nil, body)
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_up(url: str, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"{url}{ROUTE_HEALTH}", timeout=1).status_code in (200, 503):
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)


@contextmanager
def spawn(command: list[str], env: dict[str, str], log: Path):
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


@contextmanager
def configuration(name: str, *, replicas: int, store_url: str, work: Path, threads: int, nginx: str):
    """Start `replicas` routers on `store_url` and nginx in front; yield the proxy's URL."""
    folder = work / name
    folder.mkdir(parents=True)
    with ExitStack() as stack:
        ports = [free_port() for _ in range(replicas)]
        for i, port in enumerate(ports):
            env = os.environ | {
                "DRIFTLOOP_HOME": str(folder / f"replica-{i}"),
                "DRIFTLOOP_ROUTER_PORT": str(port),
                "DRIFTLOOP_ROUTER_STORE_URL": store_url,
                "DRIFTLOOP_WORKER_THREADS": str(threads),
                "DRIFTLOOP_OUTBOX_INTERVAL_SECONDS": "0",
                "DRIFTLOOP_TRAFFIC_HEARTBEAT_SECONDS": "0",
                "DRIFTLOOP_MODEL_REFRESH_SECONDS": "0",
            }
            log = folder / f"replica-{i}.log"
            process = stack.enter_context(spawn([sys.executable, "-m", "tests.serving.live_router"], env, log))
            # One at a time: replicas creating the tables at once is safe, but slower to start on a busy machine.
            wait_up(f"http://127.0.0.1:{port}", process, log)
        listen = free_port()
        prefix = folder / "nginx"
        config = proxy.write_config(listen_port=listen, upstream_ports=ports, prefix=prefix)
        log = folder / "nginx.log"
        process = stack.enter_context(spawn(proxy.nginx_command(nginx, config, prefix), dict(os.environ), log))
        wait_up(f"http://127.0.0.1:{listen}", process, log)
        yield f"http://127.0.0.1:{listen}"


def run_wrk(url: str, *, seconds: int, connections: int, script: Path) -> dict:
    """Drive `url` with wrk; requests per second, latency percentiles and non-2xx answers."""
    threads = max(1, min(2, connections))
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout

    def ms(label: str) -> float | None:
        match = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if match is None:
            return None
        value, unit = float(match.group(1)), match.group(2)
        return round(value / 1000 if unit == "us" else value * 1000 if unit == "s" else value, 2)

    total = re.search(r"(\d+) requests in", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests_per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": int(total.group(1)) if total else None,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": errors.group(1).strip() if errors else "",
        "latency_ms": {"p50": ms("50%"), "p90": ms("90%"), "p99": ms("99%")},
    }


def stored_rows(store_url: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM inferences")).scalar_one())
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20, help="wrk duration per configuration")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--threads", type=int, default=16, help="worker threads (and pooled connections) per replica")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of load before each measurement")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    nginx = proxy.find_nginx("nginx")
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-replicas-") as tmp:
        work = Path(tmp)
        script = work / "predict.lua"
        script.write_text(WRK_SCRIPT.replace("{route}", ROUTE_PREDICT))
        database = f"driftloop_bench_{uuid.uuid4().hex[:10]}"
        pg_url = make_url(ADMIN_URL).set(drivername="postgresql+psycopg", database=database)
        pg = pg_url.render_as_string(hide_password=False)
        plan = [
            ("sqlite-1-replica", 1, f"sqlite:///{work / 'router.db'}"),
            ("postgres-1-replica", 1, pg),
            ("postgres-2-replicas", 2, pg),
        ]
        try:
            for name, replicas, store_url in plan:
                databases.ensure([store_url], reset=True)
                with configuration(
                    name, replicas=replicas, store_url=store_url, work=work, threads=args.threads, nginx=nginx
                ) as url:
                    if args.warmup:
                        run_wrk(url, seconds=args.warmup, connections=args.connections, script=script)
                    before = stored_rows(store_url)
                    measured = run_wrk(url, seconds=args.seconds, connections=args.connections, script=script)
                    measured["rows_logged"] = stored_rows(store_url) - before
                results.append(
                    {"configuration": name, "replicas": replicas, "store": store_url.split(":")[0]} | measured
                )
                print(json.dumps(results[-1]), flush=True)
        finally:
            with databases._admin(pg_url) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    report = {
        "command": "uv run python -m bench.replicas " + " ".join(argv if argv is not None else sys.argv[1:]),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": args.seconds,
        "connections": args.connections,
        "threads_per_replica": args.threads,
        "cpus": os.cpu_count(),
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print("| configuration | requests/s | p50 ms | p99 ms | non-2xx | rows logged |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        lat = r["latency_ms"]
        print(f"| {r['configuration']} | {r['requests_per_second']:.0f} | {lat['p50']} | {lat['p99']} | "
              f"{r['non_2xx']} | {r['rows_logged']} |")  # fmt: skip
    print(f"written to {args.output}; load average {report['load_average_1min']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
