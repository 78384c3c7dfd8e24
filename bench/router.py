"""Router benchmark: the HTTP floor, the classic Flask design and this router, one after another, under a real load.

Each server runs as a process of its own on loopback (one worker, the router's uvicorn settings), is warmed up, then
loaded by wrk (Debian's `wrk`; a Python load generator when wrk is missing) at 16 and 64 connections, each point
bounded in time. The models are real registered PyCaret pipelines (GaussianNB and ExtraTrees on iris, champion and
challenger of the same kind) in a throw-away MLflow store. Run `uv run python -m bench.router` (`--tiny` for the
quick harness check CI runs); it writes `bench/results/router.json` and the README's performance table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.readme import write_table
from contracts.api import ROUTE_PREDICT
from contracts.registry import CHALLENGER, CHAMPION

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "router.json"
RESULTS_CEILING = ROOT / "bench" / "results" / "router_ceiling.json"
FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
KINDS = {"nb": "GaussianNB", "et": "ExtraTrees (100 trees)"}
SYNCHRONOUS = ("full", "normal")
"""The router's SQLite store with a disk sync at every group commit (the default), then with syncs left to WAL
checkpoints (`DRIFTLOOP_STORE_SQLITE_SYNCHRONOUS=normal`: safe against a crash of the router, not of the machine)."""

WRK_SCRIPT = """
counter = 0
request = function()
  counter = counter + 1
  local body = string.format(
    '{"user_id":"u%d","features":{"sepal_length":5.1,"sepal_width":3.5,"petal_length":%0.1f,"petal_width":0.2}}',
    counter % 5000, 1 + (counter % 50) / 10)
  return wrk.format("POST", "%s", {["Content-Type"] = "application/json"}, body)
end
"""


@dataclass
class Point:
    """One load point: a server at a number of connections."""

    server: str
    connections: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    timeouts: int
    cpu_us_per_request: float | None = None
    """CPU time (user + system) of the server's processes per answered request; None where /proc is missing."""
    main_us_per_request: float | None = None
    """The same for the processes' main threads only: the event loop (a gunicorn worker's only thread)."""


@dataclass
class Run:
    """What one bench run measured, and where."""

    started_at: str
    generator: str
    seconds_per_point: float
    connections: list[int]
    load_before: list[float]
    load_after: list[float]
    cpus: int
    python: str
    points: list[Point] = field(default_factory=list)
    ratios: dict[str, Any] = field(default_factory=dict)
    command: str = ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def register_models(home: Path, kinds: list[str]) -> str:
    """Train PyCaret pipelines on iris and register two versions of each kind (champion v1, challenger v2).

    Returns:
        The MLflow tracking URI (a SQLite store under `home`); models are named `Bench-<kind>`.
    """
    warnings.filterwarnings("ignore")
    os.environ.setdefault("PYCARET_CUSTOM_LOGGING_PATH", str(home / "pycaret.log"))
    import mlflow
    import mlflow.sklearn
    from mlflow import MlflowClient
    from mlflow.models import infer_signature
    from pycaret.classification import ClassificationExperiment
    from sklearn.datasets import load_iris

    uri = f"sqlite:///{home / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment("bench", artifact_location=(home / "artifacts").as_uri())
    data = load_iris(as_frame=True).frame
    data.columns = [*FEATURES, "species"]
    data["species"] = data["species"].map(dict(enumerate(["setosa", "versicolor", "virginica"])))
    client = MlflowClient(uri, uri)
    for kind in kinds:
        for session, alias in ((1, CHAMPION), (2, CHALLENGER)):
            exp = ClassificationExperiment()
            exp.setup(data, target="species", session_id=session, n_jobs=1, verbose=False, html=False, system_log=False)
            pipeline = exp.finalize_model(exp.create_model(kind, cross_validation=False, verbose=False))
            features = data[list(FEATURES)]
            with mlflow.start_run(experiment_id=experiment):
                info = mlflow.sklearn.log_model(
                    pipeline,
                    name="model",
                    signature=infer_signature(features, pipeline.predict(features)),
                    input_example=features.head(3),
                    serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
                    pip_requirements=["scikit-learn", "pycaret"],
                    registered_model_name=f"Bench-{kind}",
                )
            client.set_registered_model_alias(f"Bench-{kind}", alias, str(info.registered_model_version))
    return uri


@dataclass
class Server:
    """How to start one server and where it listens."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int

    def start(self, log: Path, timeout: float = 180.0) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        body = {"user_id": "warm", "features": dict.fromkeys(FEATURES, 1.0)}
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {process.returncode}; see {log}")
            try:
                if httpx.post(f"http://127.0.0.1:{self.port}{ROUTE_PREDICT}", json=body, timeout=2).status_code == 200:
                    return process
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        stop(process)
        raise RuntimeError(f"{self.name} did not answer within {timeout} s; see {log}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def cpu_ticks(pgid: int) -> tuple[int, int] | None:
    """CPU clock ticks (user + system) used so far by the processes of a process group: all threads, main threads.

    None where /proc cannot say (not Linux).
    """
    total = main = 0
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            fields = _stat_fields(Path(f"/proc/{pid}/stat"))
            if int(fields[2]) != pgid:  # field 5: the process group
                continue
            # Fields 14 and 15, utime and stime: the process's count includes its threads that ended.
            thread = _stat_fields(Path(f"/proc/{pid}/task/{pid}/stat"))
            total += int(fields[11]) + int(fields[12])
            main += int(thread[11]) + int(thread[12])
        except (OSError, ValueError, IndexError):
            continue  # a process that ended meanwhile
    return total, main


def _stat_fields(path: Path) -> list[str]:
    """The fields of a /proc stat file after the command name (which may hold spaces), from field 3 on."""
    return path.read_text().rsplit(")", 1)[1].split()


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip()).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(url: str, connections: int, seconds: float, script: Path) -> dict[str, float]:
    """One wrk point (2 threads, `--latency`, bounded by `--duration` and a 2 s per-request timeout)."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "2s", "--latency",
         "-s", str(script), url],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    timeouts = int(socket_errors.group(4)) if socket_errors else 0
    errors = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(int(socket_errors.group(i)) for i in (1, 2, 3)) if socket_errors else 0
    )
    return {"requests_per_s": rps, "p50_ms": p50, "p99_ms": p99, "requests": requests, "errors": errors,
            "timeouts": timeouts}  # fmt: skip


async def _python_load(url: str, connections: int, seconds: float) -> dict[str, float]:
    """A closed-loop load generator (each connection sends its next request when the previous one is answered)."""
    import aiohttp
    import numpy as np

    latencies: list[float] = []
    errors = timeouts = 0
    deadline = time.perf_counter() + seconds
    rng = random.Random(0)

    async def connection(session: aiohttp.ClientSession) -> None:
        nonlocal errors, timeouts
        while time.perf_counter() < deadline:
            body = {
                "user_id": f"u{rng.randrange(5000)}",
                "features": {f: round(rng.uniform(1, 6), 1) for f in FEATURES},
            }
            started = time.perf_counter()
            try:
                async with session.post(url, json=body) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                        continue
            except TimeoutError:
                timeouts += 1
                continue
            except aiohttp.ClientError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=2)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(connection(session) for _ in range(connections)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {"requests_per_s": len(latencies) / elapsed, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "requests": len(latencies), "errors": errors,
            "timeouts": timeouts}  # fmt: skip


def load(url: str, connections: int, seconds: float, script: Path | None) -> dict[str, float]:
    """One load point with wrk, or the Python generator when wrk is missing."""
    if script is not None:
        return run_wrk(url, connections, seconds, script)
    return asyncio.run(_python_load(url, connections, seconds))


def servers(home: Path, uri: str, kinds: list[str], *, flask: bool, shadow: bool) -> list[Server]:
    """The servers of one run, in order: bare, then per model kind Flask, the router, the router with shadow mode
    (each with both settings of the SQLite sync)."""
    py = sys.executable
    found = [bare_server()]
    for kind in kinds:
        if flask:
            port = free_port()
            gunicorn = str(Path(py).with_name("gunicorn"))
            found.append(
                Server(
                    f"Flask + gunicorn, mlflow.pyfunc + CSV ({KINDS[kind]})",
                    [
                        gunicorn,
                        "-w",
                        "1",
                        "-b",
                        f"127.0.0.1:{port}",
                        "--log-level",
                        "warning",
                        "bench.router_servers:flask_app()",
                    ],
                    {
                        "BENCH_MODEL_URI": f"models:/Bench-{kind}@champion",
                        "MLFLOW_TRACKING_URI": uri,
                        "BENCH_CSV": str(home / f"flask-{kind}.csv"),
                        "PYCARET_CUSTOM_LOGGING_PATH": str(home / "p.log"),
                    },
                    port,
                )  # fmt: skip
            )
        for with_shadow in (False, True) if shadow else (False,):
            for synchronous in SYNCHRONOUS:
                mode = ", shadow mode" if with_shadow else ""
                mode += ", synchronous=NORMAL" if synchronous == "normal" else ""
                found.append(
                    router(
                        f"this router ({KINDS[kind]}{mode})",
                        [py, "-m", "serving"],
                        home,
                        uri,
                        kind,
                        shadow=with_shadow,
                        synchronous=synchronous,
                    )
                )
    return found


def bare_server() -> Server:
    """The bare Litestar endpoint (the floor of the HTTP stack) on a free port."""
    port = free_port()
    return Server("bare Litestar endpoint", [sys.executable, "-m", "bench.router_servers", "bare", str(port)], {}, port)


def router(
    name: str, argv: list[str], home: Path, uri: str, kind: str, *, shadow: bool = False, synchronous: str = "full"
) -> Server:
    """A router server on a free port, serving `Bench-<kind>` from `uri`, with a store of its own under `home`."""
    port = free_port()
    env = {
        "DRIFTLOOP_HOME": str(home / f"router-{port}"),
        "DRIFTLOOP_MLFLOW_TRACKING_URI": uri,
        "DRIFTLOOP_MODEL_NAME": f"Bench-{kind}",
        "DRIFTLOOP_ROUTER_PORT": str(port),
        "DRIFTLOOP_SHADOW_MODE": str(shadow).lower(),
        "DRIFTLOOP_STORE_SQLITE_SYNCHRONOUS": synchronous,
        "DRIFTLOOP_TRAFFIC_HEARTBEAT_SECONDS": "0",
        "PREFECT_API_URL": "http://127.0.0.1:9/api",  # no Prefect here: the outbox keeps the events
    }
    return Server(name, argv, env, port)


CEILING_SERVERS = {
    "no-model": "ceiling: this router without a model (constant answer)",
    "no-model-no-log": "ceiling: this router without a model or a log write",
}


def ceiling_servers(home: Path, uri: str, kinds: list[str]) -> list[Server]:
    """The bare endpoint, this router per model kind, then this router hollowed out (see
    `bench.router_servers.hollow_router`): what its own pipeline allows whatever the model and the store cost."""
    py = sys.executable
    found = [bare_server()]
    found += [router(f"this router ({KINDS[kind]})", [py, "-m", "serving"], home, uri, kind) for kind in kinds]
    for what, name in CEILING_SERVERS.items():
        found.append(router(name, [py, "-m", "bench.router_servers", "ceiling", what], home, uri, kinds[0]))
    return found


def ratios(points: list[Point]) -> dict[str, Any]:
    """Each router point against the bare endpoint and the Flask design at the same connections, with the targets."""
    by = {(p.server, p.connections): p for p in points}
    bare = {p.connections: p for p in points if p.server.startswith("bare")}
    out: dict[str, Any] = {}
    for p in points:
        if not p.server.startswith(("this router", "ceiling")) or p.connections not in bare:
            continue
        kind = next((label for label in KINDS.values() if label in p.server), None)
        flask = by.get((f"Flask + gunicorn, mlflow.pyfunc + CSV ({kind})", p.connections)) if kind else None
        b = bare[p.connections]
        entry: dict[str, Any] = {
            "share_of_bare_rps": p.requests_per_s / b.requests_per_s,
            "p99_over_bare_p99": p.p99_ms / b.p99_ms,
            "x_flask_rps": p.requests_per_s / flask.requests_per_s if flask else None,
        }
        entry["targets"] = {
            "rps >= 50% of bare": entry["share_of_bare_rps"] >= 0.5,
            "rps >= 10x Flask": None if flask is None else entry["x_flask_rps"] >= 10,
            ("p99 < 25 ms" if p.connections <= 16 else "p99 <= 3x bare p99"): (
                p.p99_ms < 25 if p.connections <= 16 else entry["p99_over_bare_p99"] <= 3
            ),
        }
        out[f"{p.server} @ c{p.connections}"] = entry
    return out


def table(run: Run) -> str:
    """The README's performance table (markdown)."""
    lines = [
        f"Measured by `{run.command}` on {run.cpus} CPUs with {run.generator}, {run.seconds_per_point:g} s per point "
        f"after a warm-up; load average before/after: {' '.join(f'{x:.2f}' for x in run.load_before)} / "
        f"{' '.join(f'{x:.2f}' for x in run.load_after)} (the machine was shared with other work when the load "
        "average exceeds the CPUs; compare ratios within one run, never absolute figures across runs).",
        "",
        "| server (one worker) | conns | req/s | p50 ms | p99 ms | errors / timeouts | vs bare req/s | vs Flask "
        "| CPU us/request (main thread) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in run.points:
        r = run.ratios.get(f"{p.server} @ c{p.connections}", {})
        share = f"{r['share_of_bare_rps']:.0%}" if r else ""
        xflask = f"{r['x_flask_rps']:.1f}x" if r.get("x_flask_rps") else ""
        cpu = (
            f"{p.cpu_us_per_request:.0f} ({p.main_us_per_request:.0f})"
            if p.cpu_us_per_request is not None and p.main_us_per_request is not None
            else ""
        )
        lines.append(
            f"| {p.server} | {p.connections} | {p.requests_per_s:,.0f} | {p.p50_ms:.1f} | {p.p99_ms:.1f} | "
            f"{p.errors} / {p.timeouts} | {share} | {xflask} | {cpu} |"
        )
    return "\n".join(lines)


def bench(
    *, kinds: list[str], connections: list[int], seconds: float, warmup: float, flask: bool, shadow: bool,
    python_load: bool = False, command: str = "", ceiling: bool = False,
) -> Run:  # fmt: skip
    """Run every server in turn and measure each load point (`ceiling`: the servers of `ceiling_servers`)."""
    generator = "wrk" if shutil.which("wrk") and not python_load else "the Python load generator (no wrk)"
    run = Run(
        started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        generator=generator,
        seconds_per_point=seconds,
        connections=connections,
        load_before=list(os.getloadavg()),
        load_after=[],
        cpus=os.cpu_count() or 0,
        python=platform.python_version(),
        command=command,
    )
    with tempfile.TemporaryDirectory(prefix="driftloop-bench-") as tmp:
        home = Path(tmp)
        script = None
        if generator == "wrk":
            script = home / "predict.lua"
            script.write_text(WRK_SCRIPT.replace('"%s"', f'"{ROUTE_PREDICT}"'))
        uri = register_models(home, kinds)
        chosen = ceiling_servers(home, uri, kinds) if ceiling else servers(home, uri, kinds, flask=flask, shadow=shadow)
        for server in chosen:
            print(f"starting {server.name}", flush=True)
            process = server.start(home / "server.log")
            try:
                url = f"http://127.0.0.1:{server.port}{ROUTE_PREDICT}"
                load(url, max(connections), warmup, script)
                for c in connections:
                    before = cpu_ticks(process.pid)
                    measured = load(url, c, seconds, script)
                    after = cpu_ticks(process.pid)
                    point = Point(server=server.name, connections=c, **measured)  # type: ignore[arg-type]
                    if before is not None and after is not None and point.requests:
                        per_request = 1e6 / os.sysconf("SC_CLK_TCK") / point.requests
                        point.cpu_us_per_request = (after[0] - before[0]) * per_request
                        point.main_us_per_request = (after[1] - before[1]) * per_request
                    run.points.append(point)
                    print(
                        f"  c{c}: {point.requests_per_s:,.0f} req/s, p50 {point.p50_ms:.1f} ms, p99 "
                        f"{point.p99_ms:.1f} ms, errors {point.errors}, timeouts {point.timeouts}",
                        flush=True,
                    )
            finally:
                stop(process)
    run.load_after = list(os.getloadavg())
    run.ratios = ratios(run.points)
    return run


def main(argv: list[str] | None = None) -> None:
    """Run the bench; write `bench/results/router.json` and the README table (not with `--tiny`).

    With `--ceiling`: the bare endpoint, this router and this router without its model (and without its log write),
    into `bench/results/router_ceiling.json` and the README's ceiling table.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="quick harness check: GaussianNB only, 1 s, no Flask")
    parser.add_argument("--ceiling", action="store_true", help="what this router's own pipeline allows (no model)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load point")
    parser.add_argument("--out", type=Path, default=None, help="results file (default bench/results/router.json)")
    parser.add_argument("--python-load", action="store_true", help="use the Python load generator even with wrk")
    args = parser.parse_args(argv)
    command = "uv run --frozen python -m bench.router" + (" --ceiling" if args.ceiling else "")
    command += " --tiny" if args.tiny else ""
    if args.tiny:
        run = bench(kinds=["nb"], connections=[4], seconds=1, warmup=0.5, flask=False, shadow=False,
                    python_load=args.python_load, command=command, ceiling=args.ceiling)  # fmt: skip
    else:
        run = bench(kinds=["nb", "et"], connections=[16, 64], seconds=args.seconds, warmup=3, flask=True, shadow=True,
                    python_load=args.python_load, command=command, ceiling=args.ceiling)  # fmt: skip
    out = args.out or (RESULTS_CEILING if args.ceiling else RESULTS)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(asdict(run), indent=2) + "\n")
    print(table(run))
    if not args.tiny and args.out is None:
        write_table("router-ceiling" if args.ceiling else "router", table(run))


if __name__ == "__main__":
    main()
