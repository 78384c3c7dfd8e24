"""The demo's last step: the loop's chain read from MLflow and Prefect, rendered as `flows.lineage` prints it."""

from __future__ import annotations

from types import SimpleNamespace

import mlflow

from contracts.registry import TAG_KIND, TAG_LOOP_ID
from deployments.demo import lineage_of


async def test_the_demo_summary_renders_the_chain_of_its_loop(prefect_harness, tracking_uri, model_name):
    # The step that failed two fresh-clone runs' demos after the loop had closed (a renderer that had moved).
    mlflow.set_experiment("training")
    with mlflow.start_run(run_name="retrain-1"):
        mlflow.set_tags({TAG_LOOP_ID: "loop-demo", TAG_KIND: "retrain"})
        mlflow.log_metric("f1", 0.9)
    settings = SimpleNamespace(model_name=model_name, mlflow_url=tracking_uri)

    summary = await lineage_of(settings, "loop-demo")

    assert summary["steps"] == [("run", "retrain run retrain-1")]
    assert summary["broken_links"] == []
    assert summary["markdown"].startswith(f"# Loop `loop-demo` of {model_name}\n")
    assert "**retrain run retrain-1**: f1 0.9" in summary["markdown"]
