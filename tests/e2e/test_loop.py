"""The whole loop on real services: Prefect server, deployments, automation trigger, worker, MLflow server, router."""

import json
import sqlite3
from pathlib import Path

import pytest
from mlflow import MlflowClient

from contracts.registry import (
    AB_EXPERIMENT,
    ALIAS_HISTORY_EXPERIMENT,
    GATE_BOOTSTRAP,
    GATE_PASSED,
    TAG_GATE,
    TAG_LOOP_ID,
    TAG_PREVIOUS_CHAMPION,
)
from tests.e2e import launch

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def demo():
    """The README's demo command with 30 s schedules, on free ports and a private home, started in the background
    when the session collected this module (see `tests/e2e/launch.py`).

    The demo waits on the loop's progress (each stage's event), not on one wall-clock budget: it gives up only when no
    stage happened for DRIFTLOOP_DEMO_STALL_SECONDS, and then prints the flow runs and the end of every service log.
    """
    running = launch.demo_for(launch.EMBEDDED)
    result = running.result()
    print(result.stdout[-20000:], result.stderr[-5000:])
    summary_path = running.home / "demo-summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return result, summary, running.home


def test_the_demo_closes_the_loop(demo):
    result, summary, _ = demo
    assert result.returncode == 0, result.stdout[-3000:]
    assert summary["closed"] is True
    assert summary["first_missing_stage"] is None
    order = [
        "bootstrap",
        "drift_detected",
        "retrain_started",
        "challenger_registered",
        "ab_decided",
        "promoted",
    ]
    times = [summary["stages_s"][s] for s in order]
    assert times == sorted(times), summary["stages_s"]
    assert "LOOP CLOSED" in result.stdout
    # Every flow run logged what it cost before its first task (the README's figure comes from these lines).
    assert {"bootstrap", "drift", "retrain", "ab-evaluation"} <= set(summary["startup_cpu_s"])


def test_drift_names_the_columns_the_simulator_changed(demo):
    _, summary, _ = demo
    assert set(summary["drift"]["drifted_columns"]) >= {"petal_length", "petal_width"}
    assert Path(summary["drift"]["report"]).read_text().lstrip().lower().startswith("<!doctype html")


def test_registry_ends_with_the_promoted_challenger_as_champion(demo):
    _, summary, home = demo
    client = MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    promoted = summary["promoted"]["challenger_version"]
    assert str(client.get_model_version_by_alias("IrisClassifier", "champion").version) == promoted
    aliases = client.get_registered_model("IrisClassifier").aliases
    # The promoted challenger's alias is gone; on a slow machine the demo may already be on its next loop, whose
    # challenger can only be a newer version.
    assert int(aliases.get("challenger", 0)) == 0 or int(aliases["challenger"]) > int(promoted)
    assert client.get_model_version("IrisClassifier", "1").tags[TAG_GATE] == GATE_BOOTSTRAP
    new = client.get_model_version("IrisClassifier", promoted)
    assert new.tags[TAG_PREVIOUS_CHAMPION] == summary["promoted"]["champion_version"]
    assert new.tags[TAG_GATE] == GATE_PASSED


def test_the_promotion_rests_on_counts_the_router_recorded(demo):
    _, summary, home = demo
    decision = summary["decision"]
    assert decision["decision"] == "PROMOTE"
    experiment = f"v{decision['champion_version']}-vs-v{decision['challenger_version']}"
    with sqlite3.connect(home / "router.db") as db:
        rows = dict(
            (arm, (labelled, correct))
            for arm, labelled, correct in db.execute(
                "SELECT arm, COUNT(label), SUM(label = prediction) FROM inferences WHERE experiment_id = ? "
                "GROUP BY arm",
                (experiment,),
            )
        )
    # The decision saw a snapshot of the log; traffic went on until the promotion, so the log holds at least as much.
    assert 0 < decision["champion_labelled"] <= rows["champion"][0]
    assert 0 < decision["challenger_labelled"] <= rows["challenger"][0]
    assert decision["challenger_correct"] / decision["challenger_labelled"] > (
        decision["champion_correct"] / decision["champion_labelled"]
    )
    assert decision["p_value"] < 0.05


def test_every_look_is_recorded_and_the_promotion_is_in_the_alias_history(demo):
    _, summary, home = demo
    decision = summary["decision"]
    experiment = f"v{decision['champion_version']}-vs-v{decision['challenger_version']}"
    latest = json.loads((home / "reports" / "ab" / experiment / "latest.json").read_text())
    assert (latest["decision"], latest["decision_id"]) == ("PROMOTE", decision["decision_id"])
    assert latest["evidence"]["plain_chi2"]["note"].startswith("not peeking-safe")
    assert latest["evidence"]["plan"]["challenger_version"] == decision["challenger_version"]
    assert len(list((home / "reports" / "ab" / experiment).glob("*.png"))) >= 1

    client = MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    looks = client.search_runs(
        [client.get_experiment_by_name(AB_EXPERIMENT).experiment_id],
        filter_string=f"tags.experiment_id = '{experiment}'",
    )
    assert {run.data.tags["decision_id"] for run in looks} >= {decision["decision_id"]}
    history = client.search_runs(
        [client.get_experiment_by_name(ALIAS_HISTORY_EXPERIMENT).experiment_id],
        filter_string=f"tags.decision_id = '{decision['decision_id']}'",
    )
    moves = {(r.data.tags["alias"], r.data.tags["from_version"], r.data.tags["to_version"]) for r in history}
    assert moves == {
        ("champion", decision["champion_version"], decision["challenger_version"]),
        ("challenger", decision["challenger_version"], ""),
    }
    challenger = client.get_model_version("IrisClassifier", decision["challenger_version"]).tags
    assert int(challenger["driftloop.plan.min_samples_per_arm"]) > 0
    # One turn of the loop: the drift event's id travelled through retrain and the plan into the decision.
    assert challenger[TAG_LOOP_ID] == decision["loop_id"] != ""


def test_the_lineage_of_the_loop_shows_the_whole_chain_with_working_links(demo):
    _, summary, _ = demo
    lineage = summary["lineage"]
    assert lineage["loop_id"] == summary["decision"]["loop_id"] != ""
    assert {"event", "run", "version", "look", "move"} <= set(lineage["kinds"])
    titles = [title for _, title in lineage["steps"]]
    # From the drift check (its MLflow run, tagged with the loop, then its alarm) to the alias moves, in order.
    assert titles[0].startswith("drift run "), titles[:3]
    assert titles.index("driftloop.drift.detected") < titles.index("driftloop.model.registered")
    assert titles.index("driftloop.model.registered") < titles.index("driftloop.model.promoted")
    assert lineage["links_checked"] >= 8 and lineage["broken_links"] == []
