"""The retrain's markdown: an infeasible plan says why and what to change, with the versions it is about."""

from flows.lib.retrain_report import infeasible_plan, skipped
from tests.flows.conftest import make_plan


def test_an_infeasible_plan_names_the_challenger_the_reason_and_the_ways_out():
    plan = make_plan(feasible=False, feasibility="needs 61.0 h at 12 labelled requests/h; maximum 24 h")
    text = infeasible_plan("Iris", plan)
    assert text.startswith("# Infeasible A/B plan: Iris v2\n")
    assert "needs 61.0 h at 12 labelled requests/h; maximum 24 h" in text
    assert "larger MDE, a longer maximum duration or a larger split" in text


def test_a_skipped_retrain_says_why():
    assert "champion changed since the drift check" in skipped(
        model_name="Iris", trigger="drift", reason="champion changed since the drift check"
    )
