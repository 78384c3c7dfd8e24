"""Replay a drift check on two files: `python -m flows.drift_replay reference.csv current.csv [--target y]`.

Calibrates the thresholds on the reference for the current file's size (the same budget settings as the flow,
`DRIFTLOOP_DRIFT_*`), runs the check and prints data quality and the verdict per column, so thresholds and methods
can be tried on one's own data. One check: persistence across checks does not apply.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd


def read(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix in {".parquet", ".pq"} else pd.read_csv(path)


def main(argv: list[str] | None = None) -> int:
    from flows.lib import artifacts
    from flows.lib.drift_calibration import calibrate_version
    from flows.lib.drift_check import check_config, run_check
    from flows.settings import get_settings

    settings = get_settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("current", type=Path)
    parser.add_argument("--target", default=None, help="target column of the reference (not tested)")
    parser.add_argument("--methods", default=None, help='method per column as JSON, e.g. {"age": "wasserstein"}')
    parser.add_argument("--resamples", type=int, default=settings.drift_calibration_resamples)
    parser.add_argument("--json", action="store_true", help="print the per-column verdicts as JSON")
    args = parser.parse_args(argv)

    reference, current = read(args.reference), read(args.current)
    target = args.target if args.target in reference.columns else None
    features = reference.drop(columns=[target]) if target else reference
    calibrated = calibrate_version(
        features,
        target=target or "",
        predictions=[],
        holdout_accuracy=None,
        min_rows=len(current),
        window_rows=len(current),
        budget=settings.drift_budget,
        period_checks=settings.drift_budget_checks,
        consecutive=settings.drift_consecutive,
        resamples=args.resamples,
        seed=settings.session_id,
        per_column_method=json.loads(args.methods) if args.methods else settings.drift_methods,
    )
    config = check_config(settings)
    result = run_check(
        features, current.drop(columns=[target], errors="ignore") if target else current, calibrated, config=config
    )
    if args.json:
        tested = {c.column: c for c in result.drift.columns} if result.drift else {}
        print(
            json.dumps(
                {
                    "valid": result.valid,
                    "schema_errors": result.quality.schema_errors,
                    "alarms": sorted(result.alarms()),
                    "columns": {
                        c.column: {
                            "method": c.method,
                            "threshold": c.threshold,
                            "score": tested[c.column].score if c.column in tested else None,
                            "drift": tested[c.column].drifted if c.column in tested else None,
                            "quality": result.quality.flagged().get(c.column, []),
                        }
                        for c in result.calibration.columns
                    },
                },
                indent=2,
            )
        )
    else:
        print(
            artifacts.drift_summary(
                title=f"Drift replay: {args.current} against {args.reference}",
                result=result,
                verdict=None,
                persistent=None,
                consecutive=settings.drift_consecutive,
                window_rows=len(current),
                report_url="",
            )
        )
        print(f"\nAlarms of this check: {', '.join(sorted(result.alarms())) or 'none'}")
    return 0 if result.valid else 2


if __name__ == "__main__":
    sys.exit(main())
