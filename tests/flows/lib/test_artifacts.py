"""The artifacts' markdown: the retrain's (an infeasible plan says why and what to change), the A/B look, the watch."""

from contracts.decision import WatchResult
from flows.lib.ab_policy import decide
from flows.lib.artifacts import ab_look, ab_watch, infeasible_plan, retrain_skipped
from tests.flows.conftest import make_plan


def test_an_infeasible_plan_names_the_challenger_the_reason_and_the_ways_out():
    plan = make_plan(feasible=False, feasibility="needs 61.0 h at 12 labelled requests/h; maximum 24 h")
    text = infeasible_plan("Iris", plan)
    assert text.startswith("# Infeasible A/B plan: Iris v2\n")
    assert "needs 61.0 h at 12 labelled requests/h; maximum 24 h" in text
    assert "larger MDE, a longer maximum duration or a larger split" in text


def test_a_skipped_retrain_says_why():
    assert "champion changed since the drift check" in retrain_skipped(
        model_name="Iris", trigger="drift", reason="champion changed since the drift check"
    )


def test_the_summary_says_what_would_change_the_decision():
    from tests.flows.lib.test_ab_policy import accuracies

    decision = decide(accuracies(400, 415, n=500))
    text = ab_look(decision, model_name="m", experiment_id="v1-vs-v2", decision_id="d1", run_url="u")
    assert f"**What would change it:** {decision.what_would_change}" in text
    assert "| champion | v1 |" in text and "design effect" in text and "always-valid" in text


def test_the_watch_says_its_verdict_why_and_how_much_of_the_period_is_watched():
    result = WatchResult(
        verdict="REGRESSION", reason="accuracy proven below 0.90", model_version="4", previous_version="3",
        expected_accuracy=0.95, previous_accuracy=0.85, threshold=0.9, accuracy=0.7, cs_lower=0.6, cs_upper=0.8,
        scored=400, elapsed_hours=1.5, period_hours=24.0,
    )  # fmt: skip
    text = ab_watch("Iris", result)
    assert text.splitlines()[0] == "# Post-promotion watch: Iris v4"
    assert "**REGRESSION**: accuracy proven below 0.90" in text
    assert "1.50 h of 24 h watched." in text
