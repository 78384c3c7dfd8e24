"""How long the retrain's training takes at 10k, 100k and 1M rows x 20 features, on this machine, with default settings.

Each size runs in a fresh interpreter (so peak memory is its own) that makes a synthetic 3-class data set with
scikit-learn's `make_classification` (20 features, 10 informative, 5 redundant, seeded) and calls the retrain's own
training task (`flows.tasks.train_candidate`) with the flows' default settings: the same model list, folds, scale
policy, tuning budget and imbalance check as a real retrain, and the configured latency budget. It reports wall and
CPU time, peak memory, PyCaret's step timings, the scale plan, the tuning outcome and the chosen model.
The target: 1,000,000 rows train in under 20 minutes.

    uv run python -m bench.retrain_scale [--sizes 10000 100000 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "retrain_scale.json"
SIZES = (10_000, 100_000, 1_000_000)
FEATURES = 20
TARGET_SECONDS = {1_000_000: 20 * 60}


def synthetic(rows: int, seed: int = 0):
    """A 3-class frame of `rows` rows and 20 float features (10 informative, 5 redundant), labels `c0`..`c2`."""
    import pandas as pd
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=rows,
        n_features=FEATURES,
        n_informative=10,
        n_redundant=5,
        n_classes=3,
        flip_y=0.02,
        random_state=seed,
    )
    frame = pd.DataFrame(x, columns=[f"x{i:02d}" for i in range(FEATURES)])
    frame["label"] = pd.Series([f"c{v}" for v in y], dtype=object)
    return frame


def one(rows: int) -> dict:
    """Train once at `rows` rows in this process, as the retrain does; what it cost and what it chose."""
    from flows.settings import FlowSettings
    from flows.tasks import train_candidate

    settings = FlowSettings(_env_file=None, target="label")
    started = time.perf_counter()
    data = synthetic(rows)
    generated = time.perf_counter() - started

    cpu, wall = time.process_time(), time.perf_counter()
    result = train_candidate.fn(data, settings, latency_budget_ms=settings.retrain_latency_budget_ms)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tuning = result.tuning
    return {
        "rows": rows,
        "features": FEATURES,
        "train_wall_seconds": round(wall, 1),
        "train_cpu_seconds": round(cpu, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
        "data_generation_seconds": round(generated, 1),
        "timings_seconds": {k: round(v, 1) for k, v in result.timings.items()},
        "scale": result.scale.as_dict() if result.scale else None,
        "chosen": result.model_id,
        "tuned_kept": result.tuned_kept,
        "tuning": tuning.as_dict() if tuning else None,
        "cv_f1": result.cv_metrics.get("f1"),
        "pycaret_holdout_f1_macro": round(result.holdout_metrics["f1_macro"], 4),
        "trained_rows": result.trained_rows,
        "candidates": [
            {
                "model_id": c.model_id,
                "cv_f1": c.cv_f1,
                "trained_rows": c.trained_rows,
                "seconds_per_fold": c.seconds_per_fold,
                "predict_ms_1row": round(c.serving_cost.single_row_ms, 2),
            }
            for c in result.candidates
        ],
        "settings": {
            "models": settings.retrain_models,
            "folds": settings.retrain_folds,
            "scale_rows": settings.retrain_scale_rows,
            "scale_folds": settings.retrain_scale_folds,
            "scale_sample_rows": settings.retrain_scale_sample_rows,
            "scale_sampled_models": settings.retrain_scale_sampled_models,
            "tune_iterations": settings.retrain_tune_iterations,
            "tune_seconds": settings.retrain_tune_seconds,
        },
    }


def measure(rows: int) -> dict:
    """Run `one(rows)` in a fresh interpreter; its result with the machine's load around it."""
    load_before = os.getloadavg()
    completed = subprocess.run(
        [sys.executable, "-m", "bench.retrain_scale", "--one", str(rows)],
        cwd=ROOT,
        env=os.environ | {"PYCARET_CUSTOM_LOGGING_PATH": os.devnull},
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    result["load_average_1min"] = {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)}
    target = TARGET_SECONDS.get(rows)
    if target is not None:
        result["target_seconds"] = target
        result["target_met"] = result["train_wall_seconds"] < target
    return result


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="row counts to measure")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON results go")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one size, in this process
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one(args.one)))
        return None
    runs = []
    for rows in args.sizes:
        run = measure(rows)
        runs.append(run)
        print(
            f"{rows:>9,} rows: {run['train_wall_seconds']:7.1f} s wall, {run['train_cpu_seconds']:7.1f} s CPU, "
            f"peak {run['peak_rss_gb']:.2f} GB; chose {run['chosen']}{' (tuned)' if run['tuned_kept'] else ''}, "
            f"CV F1 {run['cv_f1']:.3f}",
            flush=True,
        )
    results = {
        "benchmark": "retrain_scale",
        "command": "uv run python -m bench.retrain_scale --sizes " + " ".join(map(str, args.sizes)),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.out}")
    return results


if __name__ == "__main__":
    main()
