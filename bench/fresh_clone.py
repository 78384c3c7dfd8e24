"""The README's quality bar for a new user: `bash .ci/run` from a fresh clone with an empty uv cache, N times in a row.

Each run clones the repository (HEAD of the current checkout) into a temporary folder, points `UV_CACHE_DIR` at a new
empty folder, and runs `.ci/run` there with the machine's environment; with `--busy`, another process keeps one core
busy for the whole run. Wall times and outcomes go to `bench/results/fresh_clone.json` (appended by label).
`bench/fresh_demo.py` does the same for `make demo`.

    uv run python -m bench.fresh_clone --runs 5
    uv run python -m bench.fresh_clone --runs 1 --busy
    uv run python -m bench.fresh_clone --runs 0   # only rewrite the README's table from the results
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.readme import write_results_table

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "fresh_clone.json"
MARKER = "fresh_clone"
"""The README's table sits between `<!-- bench:fresh_clone:start -->` and `<!-- bench:fresh_clone:end -->`."""


@dataclass
class Checkout:
    """A fresh clone with its own empty uv cache, and where its command's output goes."""

    repo: Path
    env: dict[str, str]
    log: Path
    load_before: tuple[float, float, float]

    def execute(self, command: list[str]) -> int:
        """Run `command` in the clone with the machine's environment (its output to the log); its exit code."""
        with self.log.open("w") as out:
            return subprocess.run(command, cwd=self.repo, env=self.env, stdout=out, stderr=subprocess.STDOUT).returncode

    def loads(self) -> dict:
        """The machine's 1/5/15-minute load averages when the run started and now (2 cores: above 2 means shared)."""
        return {
            "load_before": [round(x, 2) for x in self.load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
            "log": str(self.log),
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }


@contextmanager
def fresh_checkout(commit: str, *, busy: bool, keep_logs: Path, label: str = "") -> Iterator[Checkout]:
    """Clone `commit` into a temporary folder with a new empty uv cache (and a busy core if asked); clean up after."""
    work = Path(tempfile.mkdtemp(prefix="driftloop-fresh-"))
    cache = Path(tempfile.mkdtemp(prefix="driftloop-uv-cache-"))
    hog = None
    load_before = os.getloadavg()
    try:
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(work / "repo")], check=True)
        subprocess.run(["git", "-C", str(work / "repo"), "checkout", "--quiet", commit], check=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_"))}
        env["UV_CACHE_DIR"] = str(cache)
        if busy:
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        keep_logs.mkdir(parents=True, exist_ok=True)
        name = f"fresh-{label + '-' if label else ''}{datetime.now(UTC):%Y%m%dT%H%M%S}{'-busy' if busy else ''}.log"
        yield Checkout(work / "repo", env, keep_logs / name, load_before)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)


def one_run(commit: str, *, busy: bool, keep_logs: Path) -> dict:
    """Clone, run `.ci/run` with an empty uv cache, return the wall time and outcome."""
    with fresh_checkout(commit, busy=busy, keep_logs=keep_logs) as run:
        started = time.monotonic()
        code = run.execute(["bash", ".ci/run"])
        wall = time.monotonic() - started
        tail = run.log.read_text(errors="replace").splitlines()[-3:]
        result = {
            "commit": commit,
            "busy_core": busy,
            "exit_code": code,
            "wall_seconds": round(wall, 1),
            "pytest_summary": next((line for line in reversed(tail) if "passed" in line or "failed" in line), ""),
        } | run.loads()
        # Before the clean-up (deleting a venv and a cache is slow): an interrupted series keeps it.
        record(result, RESULTS, "uv run python -m bench.fresh_clone --runs N [--busy]")
        return result


def head_commit() -> str:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    return commit.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    args = series_args(argv, __doc__.splitlines()[0], default_runs=5)
    runs = run_series(
        args, one_run, lambda run: f"exit {run['exit_code']}, {run['wall_seconds']:.0f} s, {run['pytest_summary']}"
    )
    write_results_table(RESULTS, MARKER, table)
    return 0 if all(r["exit_code"] == 0 for r in runs) else 1


def series_args(argv: list[str] | None, description: str, *, default_runs: int) -> argparse.Namespace:
    """The options every fresh-clone bench takes: how many runs, a busy core or not, where the logs go."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=default_runs, help="consecutive runs (0: only rewrite the table)")
    parser.add_argument("--busy", action="store_true", help="keep one core busy with another process")
    parser.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()), help="where each run's log goes")
    return parser.parse_args(argv)


def run_series(args: argparse.Namespace, one_run: Callable[..., dict], describe: Callable[[dict], str]) -> list[dict]:
    """Run `one_run` on the checkout's HEAD `args.runs` times in a row, printing a line per run."""
    commit = head_commit()
    runs = []
    for i in range(args.runs):
        run = one_run(commit, busy=args.busy, keep_logs=args.logs)
        runs.append(run)
        print(f"run {i + 1}/{args.runs}: {describe(run)}")
    return runs


def table(runs: list[dict]) -> str:
    """Every recorded run as a markdown table, oldest first."""
    lines = [
        "| run | ended (UTC) | commit | machine | `.ci/run` | wall | pytest | load average before / after (1 min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(runs, 1):
        lines.append(
            f"| {i} | {r['at'][:16].replace('T', ' ')} | {r['commit'][:7]} | {machine(r)} | "
            f"{'pass' if r['exit_code'] == 0 else 'FAIL'} | {r['wall_seconds']:,.0f} s | "
            f"{r['pytest_summary'].strip('= ')} | {r['load_before'][0]:.1f} / {r['load_after'][0]:.1f} |"
        )
    return "\n".join(lines)


def machine(run: dict) -> str:
    return "one core busy" if run["busy_core"] else "quiet"


def record(run: dict, results: Path, command: str) -> None:
    """Append one run to a results file."""
    data = json.loads(results.read_text()) if results.exists() else {"runs": []}
    data["command"] = command
    data["runs"].append(run)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
