"""The one-machine stack: Prefect server, MLflow server, router and worker as local processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx

from deployments.settings import StackSettings

PROJECT_DIR = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


class StackError(RuntimeError):
    """A service could not start or died: the message says which and why."""


@dataclass
class Service:
    """One local process with its log file and health check."""

    name: str
    command: list[str]
    port: int | None
    health_url: str | None
    log_path: Path
    accept_status: tuple[int, ...] = (200,)
    kill_grace_seconds: float = 10.0
    process: subprocess.Popen | None = field(default=None, repr=False)

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise StackError(
                f"{self.name} exited with code {self.process.returncode}; last lines of {self.log_path}:\n"
                f"{self.log_tail()}"
            )


def port_is_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Stack:
    """Starts, health-checks, wires and stops every service of the loop.

    Use as a context manager: every process it started is stopped on exit, the worker by SIGKILL of its
    process group after a grace period (it ignores SIGTERM).
    """

    def __init__(self, settings: StackSettings, *, log=print):
        self.settings = settings
        self.home = settings.home.resolve()
        self.log = log
        self.services: list[Service] = []

    # -- environment -------------------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The environment every child process (and this one's Prefect client) uses."""
        s = self.settings
        env = dict(os.environ)
        env.update(
            {
                "PREFECT_HOME": str(self.home / "prefect"),
                "PREFECT_API_URL": s.prefect_api_url,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "DO_NOT_TRACK": "1",
                "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
                "PREFECT_WORKER_QUERY_SECONDS": str(s.worker_poll_seconds),
                "PREFECT_WORKER_PREFETCH_SECONDS": str(max(s.worker_poll_seconds, 1)),
                "DRIFTLOOP_HOME": str(self.home),
                "DRIFTLOOP_MODEL_NAME": s.model_name,
                "DRIFTLOOP_MLFLOW_TRACKING_URI": s.mlflow_url,
                "MLFLOW_TRACKING_URI": s.mlflow_url,
                "DRIFTLOOP_ROUTER_URL": s.router_url,
                "DRIFTLOOP_ROUTER_PORT": str(s.router_port),
                "GIT_PYTHON_REFRESH": "quiet",
                # PyCaret writes logs.log into the working directory (the checkout) of every process importing it.
                "PYCARET_CUSTOM_LOGGING_PATH": str(self.home / "logs" / "pycaret.log"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def use_in_this_process(self) -> None:
        """Point this process's Prefect and MLflow clients at the stack."""
        for key in (
            "PREFECT_HOME",
            "PREFECT_API_URL",
            "DO_NOT_TRACK",
            "MLFLOW_TRACKING_URI",
            "DRIFTLOOP_MLFLOW_TRACKING_URI",
            "DRIFTLOOP_ROUTER_URL",
            "DRIFTLOOP_HOME",
        ):
            os.environ[key] = self.env()[key]

    # -- processes ---------------------------------------------------------------------------------------------
    def _service(self, name: str, command: list[str], port: int | None, health: str | None, **kw) -> Service:
        return Service(name, command, port, health, self.home / "logs" / f"{name}.log", **kw)

    def _spawn(self, service: Service) -> None:
        if service.port is not None and not port_is_free(service.port):
            raise StackError(
                f"port {service.port} for {service.name} is taken on 127.0.0.1: stop what uses it or set "
                f"DRIFTLOOP_{service.name.upper()}_PORT"
            )
        service.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = service.log_path.open("ab")
        # A session of its own: Ctrl-C in the terminal reaches only us, and we stop the children in order.
        service.process = subprocess.Popen(
            service.command,
            cwd=PROJECT_DIR,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.services.append(service)
        self.log(f"started {service.name} (pid {service.process.pid}), log {service.log_path}")

    def _wait_healthy(self, service: Service) -> None:
        deadline = time.monotonic() + self.settings.start_timeout_seconds
        while time.monotonic() < deadline:
            service.check_alive()
            try:
                if httpx.get(service.health_url, timeout=2).status_code in service.accept_status:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise StackError(
            f"{service.name} did not answer {service.health_url} within {self.settings.start_timeout_seconds:.0f} s;"
            f" last lines of {service.log_path}:\n{service.log_tail()}"
        )

    def check(self) -> None:
        """Raise StackError when any started process has died."""
        for service in self.services:
            service.check_alive()

    def _run(self, *command: str, what: str) -> str:
        result = subprocess.run(
            list(command),
            cwd=PROJECT_DIR,
            env=self.env(),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise StackError(f"{what} failed ({' '.join(command)}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result.stdout

    def start(self) -> None:
        """Bring every service up, deploy the flows, apply the automations and start a worker."""
        s = self.settings
        # Before this process imports Prefect: its settings are read once, and without PREFECT_API_URL a client
        # would start an ephemeral server of its own.
        self.use_in_this_process()
        (self.home / "mlflow").mkdir(parents=True, exist_ok=True)
        prefect = self._service(
            "prefect",
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(s.prefect_port)],
            s.prefect_port,
            f"{s.prefect_api_url}/health",
        )
        mlflow = self._service(
            "mlflow",
            [
                str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(s.mlflow_port), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}",
                "--artifacts-destination", (self.home / "mlflow" / "artifacts").as_uri(), "--serve-artifacts",
            ],
            s.mlflow_port,
            f"{s.mlflow_url}/health",
        )  # fmt: skip
        # The router answers 503 until a champion exists: any answer means it is up.
        router = self._service(
            "router",
            [sys.executable, "-m", "serving"],
            s.router_port,
            f"{s.router_url}/health",
            accept_status=(200, 503),
        )
        worker = self._service(
            "worker",
            [str(BIN / "prefect"), "worker", "start", "--pool", s.work_pool, "--type", "process"],
            None,
            None,
            kill_grace_seconds=3.0,
        )
        for service in (prefect, mlflow, router):
            self._spawn(service)
        self._wait_healthy(prefect)
        self.log("prefect is up")
        self._recover_interrupted_runs()
        self._run(
            str(BIN / "prefect"), "work-pool", "create", s.work_pool, "--type", "process", "--overwrite",
            what="creating the work pool",
        )  # fmt: skip
        self._spawn(worker)
        self._run(str(BIN / "prefect"), "--no-prompt", "deploy", "--all", what="prefect deploy --all")
        self.log("deployed every deployment of prefect.yaml")
        applied = self._run(sys.executable, "-m", "automations.apply", what="applying automations/")
        self.log(applied.strip())
        for service in (mlflow, router):
            self._wait_healthy(service)
            self.log(f"{service.name} is up")
        self._wait_worker()
        self.log("worker is polling")

    def _recover_interrupted_runs(self) -> None:
        """Crash the runs a previous session's stop cut short and free the deployment slots they held.

        Stopping kills the worker with its flow runs, so their state stays Running and their deployment's
        concurrency slot stays taken; with `CANCEL_NEW` every later run would then be cancelled.
        """
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
        from prefect.client.schemas.objects import StateType
        from prefect.states import Crashed

        async def recover() -> int:
            async with get_client() as client:
                active = FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING, StateType.CANCELLING])
                runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=active)))
                for run in runs:
                    await client.set_flow_run_state(
                        run.id, Crashed(message="the local stack stopped while this run was active"), force=True
                    )
                for limit in await client.read_global_concurrency_limits(limit=200):
                    if limit.name.startswith("deployment:") and limit.active_slots:
                        await client.update_global_concurrency_limit(
                            limit.name, GlobalConcurrencyLimitUpdate(active_slots=0)
                        )
                return len(runs)

        crashed = asyncio.run(recover())
        if crashed:
            self.log(f"marked {crashed} run(s) interrupted by the last stop as Crashed and freed their slots")

    def _wait_worker(self) -> None:
        from prefect.client.orchestration import get_client

        async def online() -> bool:
            async with get_client() as client:
                return bool(await client.read_workers_for_work_pool(self.settings.work_pool))

        deadline = time.monotonic() + self.settings.start_timeout_seconds
        while time.monotonic() < deadline:
            self.check()
            if asyncio.run(online()):
                return
            time.sleep(0.5)
        raise StackError("the worker did not register with the work pool in time")

    def set_schedules(
        self, seconds: int, deployments: tuple[str, ...] = ("drift/drift", "ab-evaluation/ab-evaluation")
    ):
        """Shorten (or lengthen) the interval schedules of the scheduled deployments through Prefect's API."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.schedules import IntervalSchedule

        async def update() -> None:
            async with get_client() as client:
                for name in deployments:
                    deployment = await client.read_deployment_by_name(name)
                    for schedule in await client.read_deployment_schedules(deployment.id):
                        await client.update_deployment_schedule(
                            deployment.id,
                            schedule.id,
                            schedule=IntervalSchedule(interval=timedelta(seconds=seconds)),
                        )

        asyncio.run(update())
        self.log(f"drift and A/B schedules run every {seconds} s")

    def set_retrain_schedule(self, seconds: int, deployment: str = "retrain/retrain-scheduled") -> None:
        """Pause the scheduled retrain (`seconds` 0), or run it every `seconds` instead of its weekly calendar."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.schedules import IntervalSchedule

        async def update() -> None:
            async with get_client() as client:
                found = await client.read_deployment_by_name(deployment)
                for schedule in await client.read_deployment_schedules(found.id):
                    if seconds > 0:
                        interval = IntervalSchedule(interval=timedelta(seconds=seconds))
                        await client.update_deployment_schedule(found.id, schedule.id, schedule=interval, active=True)
                    else:
                        await client.update_deployment_schedule(found.id, schedule.id, active=False)

        asyncio.run(update())
        self.log(f"scheduled retrain every {seconds} s" if seconds > 0 else "scheduled retrain paused")

    def stop(self) -> None:
        """Stop every started process, newest first; SIGKILL whatever outlives its grace period."""
        # A second Ctrl-C must not interrupt the shutdown and leave servers holding their ports.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self._stop_all()
        finally:
            signal.signal(signal.SIGINT, previous)

    def _stop_all(self) -> None:
        for service in reversed(self.services):
            process = service.process
            if process is None or process.poll() is not None:
                continue
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=service.kill_grace_seconds)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            except ProcessLookupError:
                pass
            # Children (flow runs, server workers) share the group: make sure none is left behind.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.log(f"stopped {service.name}")
        self.services.clear()

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def urls(settings: StackSettings) -> dict[str, str]:
    """Where the three UIs are."""
    return {
        "Prefect UI": f"http://127.0.0.1:{settings.prefect_port}",
        "MLflow UI": settings.mlflow_url,
        "Router OpenAPI": f"{settings.router_url}/schema",
    }
