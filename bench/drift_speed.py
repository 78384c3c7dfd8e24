"""Speed and peak memory of one drift check on large windows, beside the same per-column statistics in scipy alone.

For 10k, 100k and 1M window rows x 4 and x 20 numeric columns (Gaussian; the reference is
`DRIFTLOOP_DRIFT_REFERENCE_ROWS`, 10,000 rows, as the reference policy keeps), each configuration in a fresh process:

- the check: `flows.lib.drift_check.run_check` on a window already in memory, as the replay command calls it (data
  quality on the whole window, then the calibrated per-column tests run by Evidently on a seeded sample of at most
  `DRIFTLOOP_DRIFT_MAX_WINDOW_ROWS` rows, whose size and seed the result and the report carry). The drift flow runs
  the same tests, but reads its window page by page into the same quality tally and a seeded reservoir sample of the
  same size (`flows/lib/window_reader.py`), so it never holds the whole window: this bench does not time that read;
- the floor: `scipy.stats.ks_2samp` of every column of the whole window against the reference.

The calibration is made once beforehand (it belongs to the registration, not the check) and Evidently is warmed up on
a tiny window, so neither import nor calibration is timed. Peak memory is the process's maximum RSS.

Run: `uv run python -m bench.drift_speed` (results in `bench/results/drift_speed.json`); `--quick` for 10k rows only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "drift_speed.json"
ROWS = (10_000, 100_000, 1_000_000)
COLUMNS = (4, 20)


def one(rows: int, columns: int) -> dict:
    import numpy as np
    import pandas as pd
    from scipy.stats import ks_2samp

    from flows.lib.drift_calibration import calibrate_version
    from flows.lib.drift_check import CheckConfig, run_check
    from flows.settings import FlowSettings

    settings = FlowSettings(_env_file=None)
    rng = np.random.default_rng(rows + columns)
    names = [f"x{i:02d}" for i in range(columns)]
    reference = pd.DataFrame(rng.standard_normal((settings.drift_reference_rows, columns)), columns=names)
    window = pd.DataFrame(rng.standard_normal((rows, columns)), columns=names)
    window["x00"] += 0.1  # a small shift in one column, so the verdicts have something to agree on
    calibrated = calibrate_version(
        reference.assign(y="a"),
        target="y",
        predictions=[],
        holdout_accuracy=None,
        min_rows=settings.drift_min_rows,
        window_rows=settings.drift_window_rows,
        budget=settings.drift_budget,
        period_checks=settings.drift_budget_checks,
        consecutive=settings.drift_consecutive,
        resamples=200,  # not timed; the thresholds' precision does not change the check's cost
        seed=1,
    )
    config = CheckConfig(max_window_rows=settings.drift_max_window_rows, sample_seed=settings.session_id)
    run_check(reference, window.head(200), calibrated, config=config)  # warm up Evidently's imports

    started = time.perf_counter()
    floor = {c: ks_2samp(reference[c].to_numpy(), window[c].to_numpy()) for c in names}
    floor_s = time.perf_counter() - started

    started = time.perf_counter()
    result = run_check(reference, window, calibrated, config=config)
    check_s = time.perf_counter() - started

    thresholds = calibrated.for_rows(rows).thresholds()
    return {
        "rows": rows,
        "columns": columns,
        "reference_rows": len(reference),
        "check_seconds": check_s,
        "floor_seconds": floor_s,
        "ratio": check_s / floor_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "tested_rows": result.sample_rows,
        "sample_seed": result.sample_seed,
        "drifted_check": result.drift.drifted_columns if result.drift else None,
        "drifted_floor_at_calibrated_thresholds": [c for c in names if floor[c].statistic > thresholds[c]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k rows only, not written to results")
    parser.add_argument("--one", nargs=2, type=int, metavar=("ROWS", "COLUMNS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(*args.one)))
        return 0
    rows_list = ROWS[:1] if args.quick else ROWS
    results = []
    for rows in rows_list:
        for columns in COLUMNS:
            out = subprocess.run(
                [sys.executable, "-m", "bench.drift_speed", "--one", str(rows), str(columns)],
                check=True,
                capture_output=True,
                text=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(row)
            print(
                f"{rows:>9,} rows x {columns:>2}: check {row['check_seconds']:.2f} s (tested {row['tested_rows']:,} "
                f"rows, seed {row['sample_seed']}), scipy floor {row['floor_seconds']:.2f} s, ratio "
                f"{row['ratio']:.1f}, peak {row['peak_rss_mb']:.0f} MB; drifted {row['drifted_check']} "
                f"(floor {row['drifted_floor_at_calibrated_thresholds']})"
            )
    if not args.quick:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(
            json.dumps(
                {
                    "command": "uv run python -m bench.drift_speed",
                    "rows": results,
                    "load_average_at_end": os.getloadavg(),
                    "cpus": os.cpu_count(),
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
