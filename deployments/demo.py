"""The demo: bring up the stack and run the whole loop once, printing a timeline and a summary.

`python -m deployments.demo [--keep-running] [--timeout S] [--stall S] [--schedule-seconds S]
[--retrain-schedule-seconds S]`; exits 0 when the loop closed (drift detected, challenger trained and registered, A/B
decided, challenger promoted and served), 1 when it did not (saying which stage did not happen, with the flow runs and
the end of every service log), 2 when a service could not start. It waits as long as the loop makes progress: it gives
up when no new stage happened for `--stall` seconds (or at the overall `--timeout`), so a slow machine gets a slow demo
rather than a failed one. The scheduled retrain is paused unless `--retrain-schedule-seconds` asks for it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import signal
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec

from contracts import events
from contracts.api import ROUTE_HEALTH, Health
from deployments import databases
from deployments.settings import StackSettings
from deployments.simulator import Simulator
from deployments.stack import Stack, StackError, urls

FLOW_RUN_STATES = ("Running", "Completed", "Failed", "Crashed", "Cancelled")
EVENT_LOOKBACK_SECONDS = 120
"""How far back each poll of the event log looks for events persisted late."""


class Timeline:
    """Prints what happens with the time since the demo started."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return round(time.monotonic() - self.t0, 1)

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():7.1f}s] {message}", flush=True)


class Watcher:
    """Follows the loop through the Prefect events its flows emit (and flow-run state changes)."""

    def __init__(self, timeline: Timeline, model_name: str):
        self.timeline = timeline
        self.model_name = model_name
        self.since = datetime.now(UTC)
        self.seen: set[str] = set()
        self.stages: dict[str, float] = {}
        self.drift: dict[str, Any] | None = None
        self.drift_checks: list[dict[str, Any]] = []
        self.registered: list[dict[str, Any]] = []
        self.decisions: list[dict[str, Any]] = []
        self.promoted: dict[str, Any] | None = None
        self.replicas: dict[str, str] = {}
        """Replica URL to the champion it served once the promotion reached it (several replicas only)."""
        self.rolled_back: dict[str, Any] | None = None
        self.flow_runs: dict[str, str] = {}
        self.progress_at = time.monotonic()
        """When the last new stage happened (the demo's patience runs from there)."""

    def deciding_look(self) -> dict[str, Any] | None:
        """The look that ended the loop the demo followed: the one that promoted (events can arrive out of order, and
        on a slow machine the next loop may already have looked before the demo stops), else the last one seen."""
        if self.promoted is not None:
            ids = self.promoted["decision_id"]
            return next((d for d in self.decisions if d["decision_id"] == ids), self.promoted)
        return self.decisions[-1] if self.decisions else None

    def _stage(self, name: str) -> None:
        if name not in self.stages:
            self.stages[name] = self.timeline.elapsed()
            self.progress_at = time.monotonic()

    def handle(self, name: str, resource_name: str, payload: dict[str, Any]) -> None:
        say = self.timeline.log
        if name.startswith("prefect.flow-run."):
            state = name.rsplit(".", 1)[-1]
            if state in FLOW_RUN_STATES:
                self.flow_runs[resource_name] = state
                if resource_name.startswith("retrain") and state == "Running":
                    self._stage("retrain_started")
                say(f"flow run '{resource_name}' {state}")
            return
        if name == events.DRIFT_CHECKED:
            self.drift_checks.append(payload)
            say(
                f"drift check: severity {payload.get('severity', 'none')}, alarms this check "
                f"{', '.join(payload.get('alarmed_columns', [])) or 'none'} over {payload['window_rows']} requests"
            )
        elif name == events.DRIFT_DETECTED:
            self.drift_checks.append(payload)
            if self.drift is None:
                self.drift = payload | {"at_s": self.timeline.elapsed()}
            self._stage("drift_detected")
            say(
                f"DRIFT DETECTED on {', '.join(payload['drifted_columns'])} (share {payload['drift_share']:.2f} over "
                f"{payload['window_rows']} requests); report {payload['report_url']}"
            )
        elif name == events.MODEL_REGISTERED:
            self.registered.append(payload | {"at_s": self.timeline.elapsed()})
            if len(self.registered) > 1 or self.drift is not None:
                self._stage("challenger_registered" if payload["gate_passed"] else "candidate_failed_gate")
            metrics = ", ".join(f"{k} {v:.3f}" for k, v in payload["metrics"].items())
            say(
                f"registered {payload['model_name']} v{payload['version']} (gate "
                f"{'passed' if payload['gate_passed'] else 'failed'}; {metrics})"
            )
        elif name == events.EXPERIMENT_DECIDED:
            self.decisions.append(payload | {"at_s": self.timeline.elapsed()})
            self._stage("ab_decided")
            say(f"A/B look: {payload['decision']}: {payload['reason']}")
        elif name == events.EXPERIMENT_SAMPLE_REACHED:
            say(
                f"router: planned sample reached in {payload['experiment_id']} ({payload['champion_labelled']} and "
                f"{payload['challenger_labelled']} labelled of {payload['min_samples_per_arm']} per arm)"
            )
        elif name == events.EXPERIMENT_INVALID:
            say(f"A/B experiment INVALID: {payload['reason']}")
        elif name == events.MODEL_PROMOTED:
            self.promoted = payload | {"at_s": self.timeline.elapsed()}
            self._stage("promoted")
            say(f"PROMOTED v{payload['challenger_version']} to champion (was v{payload['champion_version']})")
        elif name == events.MODEL_ROLLED_BACK:
            self.rolled_back = payload
            say(f"ROLLED BACK v{payload['challenger_version']}: {payload['reason']}")

    async def run(self) -> None:
        """Poll the Prefect event log once a second until cancelled."""
        from prefect.client.orchestration import get_client
        from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventOrder

        async with get_client() as client:
            while True:
                try:
                    # Events reach the log in batches and a busy server persists them late, with an `occurred`
                    # older than events already seen: look back a while and skip what was handled (by id).
                    page = await client.read_events(
                        filter=EventFilter(
                            occurred=EventOccurredFilter(
                                since=self.since - timedelta(seconds=EVENT_LOOKBACK_SECONDS), until=datetime.now(UTC)
                            ),
                            event=EventNameFilter(prefix=["driftloop.", "prefect.flow-run."]),
                            order=EventOrder.ASC,
                        ),
                        limit=50,
                    )
                    events = list(page.events)
                    while page.next_page:
                        page = await client.read_events_page(page.next_page)
                        events += page.events
                    for event in sorted(events, key=lambda e: e.occurred):
                        if str(event.id) in self.seen:
                            continue
                        self.seen.add(str(event.id))
                        self.since = max(self.since, event.occurred)
                        self.handle(event.event, event.resource.get("prefect.resource.name", ""), event.payload)
                except Exception as exc:  # noqa: BLE001 - the watcher only reports; the stack check catches deaths
                    self.timeline.log(f"(could not read events: {exc!r})")
                await asyncio.sleep(1)


STAGES = [
    ("bootstrap", "a champion was trained and registered"),
    ("traffic", "the router served the simulated traffic"),
    ("drift_detected", "the drift flow detected drift"),
    ("retrain_started", "the automation started a retrain run"),
    ("challenger_registered", "a challenger passed the gate and was registered"),
    ("ab_decided", "the A/B evaluation decided on counts from the router"),
    ("promoted", "the challenger was promoted to champion"),
    ("router_serves_new_champion", "the router serves the new champion without a restart"),
]


def replica_urls(settings: StackSettings) -> list[str]:
    """The replicas behind the proxy (none when one router serves on the router port itself)."""
    if settings.router_replicas == 1:
        return []
    return [f"http://127.0.0.1:{settings.router_port + i}" for i in range(1, settings.router_replicas + 1)]


PICKUP_SECONDS = 120.0
"""How long a router may take to serve a new champion after its promotion (it re-reads the aliases every few seconds
and loads the model; a busy machine slows both)."""


async def wait_for_champion(router_url: str, timeout: float, version: str | None = None) -> Health:
    """Wait until the router serves a champion (this version, when given)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=router_url, timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                health = msgspec.json.decode((await client.get(ROUTE_HEALTH)).content, type=Health)
                if health.champion_version and version in (None, health.champion_version):
                    return health
            except (httpx.HTTPError, msgspec.DecodeError):
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError(f"the router did not serve champion {version or ''} within {timeout:.0f} s")


async def run_loop(stack: Stack, settings: StackSettings, timeline: Timeline) -> dict[str, Any]:
    """Bootstrap, send traffic, and follow the loop until the challenger is promoted or time runs out."""
    from prefect.deployments import run_deployment

    from flows.lib.data import load_dataset
    from flows.settings import FlowSettings

    deadline = time.monotonic() + settings.demo_timeout_seconds
    watcher = Watcher(timeline, settings.model_name)
    watch = asyncio.create_task(watcher.run())
    traffic = None
    try:
        timeline.log("bootstrap: running the bootstrap deployment (trains a first champion if there is none)")
        run = await run_deployment("bootstrap/bootstrap", timeout=settings.demo_timeout_seconds)
        if not run.state.is_completed():
            raise StackError(f"the bootstrap run {run.name} ended {run.state.name}: see the Prefect UI")
        health = await wait_for_champion(settings.router_url, 60)
        watcher._stage("bootstrap")
        timeline.log(f"router serves champion v{health.champion_version}")

        flow_settings = FlowSettings()
        reference = load_dataset(flow_settings.dataset, flow_settings.target)
        sim = Simulator(
            settings.router_url,
            reference,
            target=flow_settings.target,
            users=settings.sim_users,
            rate=settings.sim_rate,
            label_share=settings.sim_label_share,
            seed=settings.sim_seed,
            token=stack.tokens["label"],
            mean_requests=settings.sim_mean_requests,
            affinity=settings.sim_user_affinity,
            label_delay_seconds=settings.sim_label_delay_seconds,
            label_delay_max_seconds=settings.sim_label_delay_max_seconds,
        )
        timeline.log(
            f"traffic: {settings.sim_reference_requests} requests from the reference distribution "
            f"at {settings.sim_rate:.0f}/s, {settings.sim_label_share:.0%} labelled (half of them late: mean "
            f"{settings.sim_label_delay_seconds:g} s), users with {settings.sim_mean_requests:g} requests each "
            "on average"
        )
        await sim.run(requests=settings.sim_reference_requests)
        drift = {
            "scenario": settings.sim_scenario,
            "columns": settings.sim_drift_columns,
            "factor": settings.sim_drift_factor,
        }
        timeline.log(
            f"traffic: drift starts ({settings.sim_scenario} x{settings.sim_drift_factor} on "
            f"{', '.join(settings.sim_drift_columns)}) and goes on until the loop closes"
        )
        stop = asyncio.Event()
        traffic = asyncio.create_task(sim.run(drift=drift, stop=stop))
        while watcher.promoted is None and time.monotonic() < deadline:
            if time.monotonic() - watcher.progress_at > settings.demo_stall_seconds:
                timeline.log(f"no progress for {settings.demo_stall_seconds:.0f} s: giving up")
                break
            stack.check()
            if sim.stats.ok:
                watcher._stage("traffic")
            if traffic.done():
                traffic.result()
            await asyncio.sleep(1)
        stop.set()  # no new requests; the late labels already owed are still posted meanwhile
        if watcher.promoted is not None:
            version = watcher.promoted["challenger_version"]
            try:
                await wait_for_champion(settings.router_url, PICKUP_SECONDS, version)
                watcher._stage("router_serves_new_champion")
                timeline.log(f"router serves champion v{version}")
                for url in replica_urls(settings):
                    # Each replica behind the proxy re-reads the aliases on its own: every one must serve it.
                    health = await wait_for_champion(url, PICKUP_SECONDS, version)
                    watcher.replicas[url] = health.champion_version or ""
                    timeline.log(f"replica {url} serves champion v{health.champion_version}")
            except TimeoutError as exc:
                timeline.log(str(exc))
        await traffic
        await asyncio.sleep(1.5)  # let the last events arrive
    finally:
        watch.cancel()
    runs = await flow_runs()
    summary = summarize(watcher, sim.stats, settings, runs)
    loop_id = (watcher.promoted or {}).get("loop_id") or (summary["decision"] or {}).get("loop_id")
    if loop_id:
        summary["lineage"] = await lineage_of(settings, loop_id)
    return summary


async def lineage_of(settings: StackSettings, loop_id: str) -> dict[str, Any]:
    """The loop's chain as `python -m flows.lineage` prints it, with every link checked against its server."""
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client

    from flows.lib import artifacts, lineage

    chain = await asyncio.to_thread(lineage.from_mlflow, settings.model_name, loop_id, settings.mlflow_url)
    chain += await lineage.from_prefect(loop_id)
    chain.sort(key=lambda step: step.at)
    mlflow, checked, broken = MlflowClient(settings.mlflow_url), 0, []
    async with get_client() as prefect:
        for step in chain:
            for name, url in step.links.items():
                checked += 1
                try:
                    if "/runs/flow-run/" in url:
                        await prefect.read_flow_run(url.rsplit("/", 1)[-1])
                    elif "/runs/" in url and url.startswith(settings.mlflow_url):
                        await asyncio.to_thread(mlflow.get_run, url.rsplit("/", 1)[-1])
                    elif "/versions/" in url:
                        await asyncio.to_thread(mlflow.get_model_version, settings.model_name, url.rsplit("/", 1)[-1])
                    elif "/events/event/" in url:
                        pass  # an event link: the event was read from the server a moment ago
                except Exception as exc:  # noqa: BLE001 - a broken link is reported, not fatal
                    broken.append(f"{name} {url}: {type(exc).__name__}")
    markdown = artifacts.loop_chain(lineage.Lineage(settings.model_name, loop_id, chain))
    return {
        "loop_id": loop_id,
        "kinds": sorted({step.kind for step in chain}),
        "steps": [(step.kind, step.title) for step in chain],
        "links_checked": checked,
        "broken_links": broken,
        "markdown": markdown,
    }


STARTUP = re.compile(r"([0-9.]+) s of CPU from process start to the first task")


async def flow_runs() -> list[dict[str, Any]]:
    """Every flow run of the demo: name, deployment, state, duration, and its startup CPU from its own log."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    async with get_client() as client:
        # Runs that were due by now: the scheduler also keeps future runs, which are not part of the story.
        due = FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(before_=datetime.now(UTC)))
        runs = await client.read_flow_runs(flow_run_filter=due, sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=200)
        names = {d.id: d.name for d in await client.read_deployments()}
        found = []
        for run in runs:
            startup = None
            if run.state_name not in ("Scheduled", "Late", "Cancelled", "Pending"):
                logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])), limit=50)
                match = next((m for log in logs if (m := STARTUP.search(log.message))), None)
                startup = float(match.group(1)) if match else None
            found.append(
                {
                    "name": run.name,
                    "deployment": names.get(run.deployment_id, ""),
                    "state": run.state_name,
                    "seconds": round(run.total_run_time.total_seconds(), 1),
                    "startup_cpu_s": startup,
                    "message": (run.state.message or "")[:200] if run.state else "",
                }
            )
        return found


def startup_costs(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per deployment: median and max CPU seconds from process start to the first task, over its real runs."""
    costs: dict[str, list[float]] = {}
    for run in runs:
        if run["startup_cpu_s"] is not None:
            costs.setdefault(run["deployment"], []).append(run["startup_cpu_s"])
    return {
        name: {"runs": len(values), "median": round(statistics.median(values), 2), "max": round(max(values), 2)}
        for name, values in sorted(costs.items())
    }


def summarize(watcher: Watcher, stats, settings: StackSettings, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """What happened, as JSON-ready data."""
    missing = next((f"{name}: {what}" for name, what in STAGES if name not in watcher.stages), None)
    decision = watcher.deciding_look()
    states: dict[str, int] = {}
    for run in runs:
        states[run["state"]] = states.get(run["state"], 0) + 1
    return {
        "closed": missing is None,
        "first_missing_stage": missing,
        "stages_s": watcher.stages,
        "drift": watcher.drift,
        "drift_checks": len(watcher.drift_checks),
        "registered": watcher.registered,
        "decision": decision,
        "looks": len(watcher.decisions),
        "promoted": watcher.promoted,
        "rolled_back": watcher.rolled_back,
        "replicas_serving": watcher.replicas,
        "flow_runs": runs,
        "flow_run_states": states,
        "startup_cpu_s": startup_costs(runs),
        "traffic": {
            "sent": stats.sent,
            "ok": stats.ok,
            "failed": stats.failed,
            "arms": stats.arms,
            "labelled_inline": stats.labelled_inline,
            "labelled_later": stats.labelled_later,
            "errors": stats.errors[:5],
        },
        "urls": urls(settings),
    }


def print_diagnostics(summary: dict[str, Any], stack: Stack) -> None:
    """What a failed run needs to be understood: the stage, every flow run, the end of every service log."""
    print(f"\nThe loop did not close. Missing stage: {summary['first_missing_stage']}")
    print(f"Stages reached (s): {summary['stages_s']}")
    print("Flow runs (oldest first):")
    for run in summary["flow_runs"]:
        startup = "" if run["startup_cpu_s"] is None else f", startup {run['startup_cpu_s']:.1f} s CPU"
        print(f"  {run['deployment']:<14} {run['name']:<32} {run['state']:<10} {run['seconds']:6.1f} s{startup}"
              f"{'  ' + run['message'] if run['message'] else ''}")  # fmt: skip
    for service in stack.services:
        print(f"\n--- last lines of {service.log_path} ---\n{service.log_tail(30)}")


def print_summary(summary: dict[str, Any], timeline: Timeline) -> None:
    print("\n" + "=" * 78)
    print(f"driftloop demo summary ({timeline.elapsed():.0f} s)")
    print("=" * 78)
    drift = summary["drift"]
    if drift:
        print(
            f"drift detected    at {drift['at_s']:.0f} s: share {drift['drift_share']:.2f}, columns "
            f"{', '.join(drift['drifted_columns'])}, {drift['window_rows']} requests (report {drift['report']})"
        )
    else:
        print(f"drift detected    no ({summary['drift_checks']} checks)")
    for reg in summary["registered"]:
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in reg["metrics"].items())
        print(
            f"model trained     v{reg['version']} at {reg['at_s']:.0f} s, gate "
            f"{'passed' if reg['gate_passed'] else 'failed'} ({metrics})"
        )
    d = summary["decision"]
    if d:
        p = "n/a" if d["p_value"] is None else f"{d['p_value']:.3g}"
        print(
            f"A/B counts        champion v{d['champion_version']}: {d['champion_correct']}/{d['champion_labelled']} "
            f"correct; challenger v{d['challenger_version']}: {d['challenger_correct']}/{d['challenger_labelled']}"
            f" correct; always-valid p {p} ({summary['looks']} looks)"
        )
        print(f"decision          {d['decision']}: {d['reason']}")
    startup = ", ".join(f"{k} {v['median']:.1f} s (max {v['max']:.1f})" for k, v in summary["startup_cpu_s"].items())
    print(f"flow runs         {summary['flow_run_states']}; CPU before the first task: {startup or 'n/a'}")
    t = summary["traffic"]
    print(
        f"traffic           {t['ok']} served, {t['failed']} failed, arms {t['arms']}, "
        f"{t['labelled_inline']} labelled inline, {t['labelled_later']} later"
    )
    for name, url in summary["urls"].items():
        print(f"{name:<17} {url}")
    if summary.get("lineage"):
        lineage = summary["lineage"]
        print(
            f"lineage           loop {lineage['loop_id']}: {len(lineage['steps'])} steps "
            f"({', '.join(lineage['kinds'])}), {lineage['links_checked']} links checked, "
            f"{len(lineage['broken_links'])} broken (`uv run python -m flows.lineage {lineage['loop_id']}`)"
        )
    if summary["closed"]:
        print("LOOP CLOSED: " + ", ".join(f"{k} at {v:.0f} s" for k, v in summary["stages_s"].items()))
    else:
        print(f"LOOP NOT CLOSED: this stage did not happen: {summary['first_missing_stage']}")


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-running", action="store_true", help="keep the services up after the loop closed")
    parser.add_argument(
        "--keep-state", action="store_true", help="start from the last run's state instead of a clean home folder"
    )
    parser.add_argument("--timeout", type=float, help="seconds before giving up (DRIFTLOOP_DEMO_TIMEOUT_SECONDS)")
    parser.add_argument(
        "--stall", type=float, help="seconds without a new stage before giving up (DRIFTLOOP_DEMO_STALL_SECONDS)"
    )
    parser.add_argument("--schedule-seconds", type=int, help="drift and A/B interval (DRIFTLOOP_DEMO_SCHEDULE_SECONDS)")
    parser.add_argument(
        "--retrain-schedule-seconds",
        type=int,
        help="run the scheduled retrain every S seconds (default 0: paused; DRIFTLOOP_DEMO_RETRAIN_SCHEDULE_SECONDS)",
    )
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.keep_running:
        overrides["demo_keep_running"] = True
    if args.timeout:
        overrides["demo_timeout_seconds"] = args.timeout
    if args.stall:
        overrides["demo_stall_seconds"] = args.stall
    if args.schedule_seconds:
        overrides["demo_schedule_seconds"] = args.schedule_seconds
    if args.retrain_schedule_seconds is not None:
        overrides["demo_retrain_schedule_seconds"] = args.retrain_schedule_seconds
    settings = StackSettings(**overrides)
    # Also when started in the background, where SIGINT arrives ignored and Python would keep ignoring it.
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    timeline = Timeline()
    if settings.home.exists() and not args.keep_state:
        # The demo tells a story from "no model" to "promoted challenger": a champion left by the last run has
        # already learnt the drift, so it would rightly never lose. Start clean unless told otherwise.
        shutil.rmtree(settings.home)
        timeline.log(f"cleared {settings.home} (the last run's state; --keep-state keeps it)")
    if not args.keep_state:
        # A profile on server databases keeps its state there: start those clean too.
        server_dbs = [settings.prefect_database_url, settings.mlflow_backend_store_uri, settings.router_store_url]
        for line in databases.ensure(server_dbs, reset=True):
            timeline.log(f"{line} (reset: the last run's state; --keep-state keeps it)")
    try:
        with Stack(settings, log=timeline.log) as stack:
            for name, url in urls(settings).items():
                timeline.log(f"{name}: {url}")
            stack.set_schedules(settings.demo_schedule_seconds)
            stack.set_retrain_schedule(settings.demo_retrain_schedule_seconds)
            summary = asyncio.run(run_loop(stack, settings, timeline))
            print_summary(summary, timeline)
            if not summary["closed"]:
                print_diagnostics(summary, stack)
            path = stack.home / "demo-summary.json"
            path.write_text(json.dumps(summary, indent=2, default=str))
            print(f"summary written to {path}")
            if settings.demo_keep_running:
                timeline.log("everything keeps running; Ctrl-C stops every process")
                try:
                    while True:
                        stack.check()
                        time.sleep(2)
                except KeyboardInterrupt:
                    timeline.log("stopping every process")
            return 0 if summary["closed"] else 1
    except StackError as exc:
        timeline.log(f"ERROR: {exc}")
        return 2
    except KeyboardInterrupt:
        timeline.log("interrupted: every process was stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
