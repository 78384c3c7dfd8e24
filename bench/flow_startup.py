"""What a flow run costs before its first task: CPU seconds of a fresh process that imports the engine and loads a flow.

A process work pool starts a new interpreter for every flow run (`python -m prefect.engine`). Before the flow's
first task, that process imports Prefect's engine and client, and loads the flow from its entrypoint (importing the
flow module). This benchmark does exactly that in a fresh interpreter per sample, for every deployment in
`prefect.yaml`, and reports the median CPU time (user + system) of the process. The flows also print the same
figure in every real run's log ("... s of CPU from process start to the first task"), which includes the API
calls the engine makes; the demo summary collects those.

    uv run python -m bench.flow_startup [--samples N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.readme import write_table

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "flow_startup.json"
MARKER = "flow_startup"
"""The README's table sits between `<!-- bench:flow_startup:start -->` and `<!-- bench:flow_startup:end -->`."""

# What `python -m prefect.engine` imports and does before it runs the flow, minus the API calls.
PROBE = """
import time
import prefect.engine, prefect.flow_engine
from prefect.client.orchestration import get_client
from prefect.flows import load_flow_from_entrypoint
load_flow_from_entrypoint({entrypoint!r})
print(time.process_time())
"""


def sample(entrypoint: str) -> float:
    """CPU seconds of one fresh interpreter that loads `entrypoint` as the engine would."""
    env = os.environ | {"PREFECT_API_URL": "http://127.0.0.1:1/api", "DO_NOT_TRACK": "1"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(entrypoint=entrypoint)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(result.stdout.strip().splitlines()[-1])


def bytecode_compiled() -> bool:
    """Whether the venv's packages have compiled bytecode (uv sync --compile-bytecode)."""
    import prefect

    cache = Path(prefect.__file__).parent / "__pycache__"
    return cache.is_dir() and any(cache.glob("*.pyc"))


def table(results: dict) -> str:
    """The README's table: each deployment's CPU before its first task against the target."""
    target = results["target_cpu_seconds"]
    lines = [
        f"`{results['command']}` (Python {results['python']}, {results['cpus']} CPUs, bytecode "
        f"{'compiled' if results['bytecode_compiled'] else 'NOT compiled'}, load average "
        f"{results.get('load_average_at_start', '?')} at the start):",
        "",
        f"| deployment | CPU s before the first task (median) | max | under {target:g} s |",
        "|---|---|---|---|",
    ]
    for row in results["rows"]:
        median, most = row["cpu_seconds_median"], row["cpu_seconds_max"]
        lines.append(f"| {row['deployment']} | {median:.2f} | {most:.2f} | {'yes' if median < target else '**no**'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5, help="fresh processes per flow (median reported)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON results go")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    started = time.monotonic()
    rows = []
    for deployment in deployments:
        cpu = [sample(deployment["entrypoint"]) for _ in range(args.samples)]
        rows.append(
            {
                "deployment": deployment["name"],
                "entrypoint": deployment["entrypoint"],
                "cpu_seconds_median": statistics.median(cpu),
                "cpu_seconds_max": max(cpu),
                "samples": cpu,
            }
        )
        median = statistics.median(cpu)
        print(f"{deployment['name']:<16} {median:5.2f} s CPU (median of {args.samples}, max {max(cpu):.2f})")
    results = {
        "command": "uv run python -m bench.flow_startup" + (f" --samples {args.samples}" if args.samples != 5 else ""),
        "bytecode_compiled": bytecode_compiled(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "wall_seconds": round(time.monotonic() - started, 1),
        "target_cpu_seconds": 3.0,
        "load_average_at_start": round(load, 2),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out}")
    if args.out == RESULTS:
        write_table(MARKER, table(results))
    return results


if __name__ == "__main__":
    main()
