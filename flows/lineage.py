"""Print one turn of the loop by its `loop_id`: drift, retrain, version and gate, plan, looks, decision, alias moves.

    uv run python -m flows.lineage [LOOP_ID] [--model NAME]      # no LOOP_ID: the newest version's loop

Reads MLflow (DRIFTLOOP_MLFLOW_TRACKING_URI) and, when PREFECT_API_URL is set, the Prefect events of the loop; every
step has its links into the MLflow and Prefect UIs.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    from flows.lib import artifacts, lineage
    from flows.settings import get_settings

    parser = argparse.ArgumentParser(prog="python -m flows.lineage", description=__doc__.splitlines()[0])
    parser.add_argument("loop_id", nargs="?", help="the loop to show (default: the newest version's)")
    parser.add_argument("--model", help="registered model (default: DRIFTLOOP_MODEL_NAME)")
    args = parser.parse_args(argv)
    settings = get_settings()
    model_name = args.model or settings.model_name
    loop_id = args.loop_id or lineage.latest_loop(model_name, settings.mlflow_tracking_uri)
    if not loop_id:
        print(f"no version of {model_name} carries a loop id yet", file=sys.stderr)
        return 1
    chain = lineage.gather(
        model_name, loop_id, settings.mlflow_tracking_uri, with_prefect=bool(os.environ.get("PREFECT_API_URL"))
    )
    print(artifacts.loop_chain(chain))
    return 0


if __name__ == "__main__":
    sys.exit(main())
