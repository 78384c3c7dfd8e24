"""The README's demo for a new user: `make demo` from a fresh clone with an empty uv cache, timed stage by stage.

Each run clones the repository (HEAD of the current checkout) into a temporary folder, points `UV_CACHE_DIR` at a new
empty folder and runs `make demo` there with the machine's environment; with `--busy`, another process keeps one core
busy for the whole run. It reads the demo's own timeline and summary (`.driftloop/demo-summary.json`) and appends
to `bench/results/fresh_demo.json`: the wall time of the whole command, when the services were up (the demo's
`bootstrap:` line), when the loop closed (`promoted`), the time between the two, and the decision that closed it.

    uv run python -m bench.fresh_demo --runs 1
    uv run python -m bench.fresh_demo --runs 1 --busy
    uv run python -m bench.fresh_demo --runs 0   # only rewrite the README's table from the results
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

from bench.fresh_clone import (
    ROOT,
    fresh_checkout,
    machine,
    record,
    run_series,
    series_args,
)
from bench.readme import write_results_table

RESULTS = ROOT / "bench" / "results" / "fresh_demo.json"
MARKER = "fresh_demo"
SERVICES_UP = re.compile(r"^\[\s*([\d.]+)s\] bootstrap: running the bootstrap deployment", re.MULTILINE)
"""The demo's first line after every service answered (`deployments/demo.py:run_loop`)."""


def timings(stdout: str, summary: dict | None) -> dict:
    """The demo's figures from its timeline and summary (None where the demo did not get that far)."""
    up = SERVICES_UP.search(stdout)
    services_up_s = float(up.group(1)) if up else None
    stages = (summary or {}).get("stages_s", {})
    promoted_s = stages.get("promoted")
    promoted = (summary or {}).get("promoted") or {}
    decision = (summary or {}).get("decision") or {}
    return {
        "closed": bool(summary and summary.get("closed")),
        "services_up_s": services_up_s,
        "promoted_s": promoted_s,
        "loop_after_services_s": round(promoted_s - services_up_s, 1) if promoted_s and services_up_s else None,
        "stages_s": stages,
        "decision": decision.get("decision"),
        "promoted": f"v{promoted['champion_version']} -> v{promoted['challenger_version']}" if promoted else None,
        "rolled_back": bool((summary or {}).get("rolled_back")),
        "flow_run_states": (summary or {}).get("flow_run_states"),
        "runs_not_completed": [
            {key: run.get(key) for key in ("name", "deployment", "state", "message")}
            for run in (summary or {}).get("flow_runs", [])
            if run.get("state") in ("Failed", "Crashed")
        ],
    }


def keep_service_logs(home: Path, into: Path) -> None:
    """Keep the demo's summary and every service log (the worker's holds each flow run's output) beside its log."""
    into.mkdir(parents=True, exist_ok=True)
    for path in [home / "demo-summary.json", *sorted((home / "logs").glob("*.log"))]:
        if path.exists():
            shutil.copy2(path, into / path.name)


def one_run(commit: str, *, busy: bool, keep_logs: Path) -> dict:
    """Clone, run `make demo` with an empty uv cache, return its figures."""
    with fresh_checkout(commit, busy=busy, keep_logs=keep_logs, label="demo") as run:
        started = time.monotonic()
        code = run.execute(["make", "demo"])
        wall = time.monotonic() - started
        stdout = run.log.read_text(errors="replace")
        home = run.repo / ".driftloop"
        found = home / "demo-summary.json"
        summary = json.loads(found.read_text()) if found.exists() else None
        keep_service_logs(home, run.log.with_suffix(""))
        result = {"commit": commit, "busy_core": busy, "exit_code": code, "wall_seconds": round(wall, 1)}
        result |= timings(stdout, summary) | run.loads()
        record(result, RESULTS, "uv run python -m bench.fresh_demo --runs N [--busy]")
        return result


def main(argv: list[str] | None = None) -> int:
    args = series_args(argv, __doc__.splitlines()[0], default_runs=1)
    runs = run_series(args, one_run, describe)
    write_results_table(RESULTS, MARKER, table)
    return 0 if all(r["exit_code"] == 0 and r["closed"] for r in runs) else 1


def describe(run: dict) -> str:
    return (
        f"exit {run['exit_code']}, {run['wall_seconds']:.0f} s in all, services up at {run['services_up_s']} s, "
        f"promoted at {run['promoted_s']} s ({run['loop_after_services_s']} s later), "
        f"{run['decision']} {run['promoted']}"
    )


def table(runs: list[dict]) -> str:
    """Every recorded run as a markdown table, oldest first."""
    lines = [
        "| run | ended (UTC) | commit | machine | exit | `make demo` in all | services up | promoted | loop after the "
        "services were up | decision | flow runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(runs, 1):
        decided = " ".join(part for part in (r["decision"] or "-", r["promoted"]) if part)
        states = ", ".join(f"{n} {state}" for state, n in sorted((r.get("flow_run_states") or {}).items()))
        lines.append(
            f"| {i} | {r['at'][:16].replace('T', ' ')} | {r['commit'][:7]} | {machine(r)} | {r['exit_code']} | "
            f"{r['wall_seconds']:,.0f} s | {seconds(r['services_up_s'])} | {seconds(r['promoted_s'])} | "
            f"**{seconds(r['loop_after_services_s'])}** | {decided} | {states or '-'} |"
        )
    return "\n".join(lines)


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} s"


if __name__ == "__main__":
    sys.exit(main())
