"""The retrain quality gate and the latency budget."""

from flows.lib.gate import latency_budget_ms, passes_gate


def test_gate_needs_the_floor_and_the_champion():
    assert passes_gate({"f1_macro": 0.9}, {"f1_macro": 0.5}, 0.7)[0] is True
    assert passes_gate({"f1_macro": 0.6}, {"f1_macro": 0.5}, 0.7) == (
        False,
        "holdout F1 0.600 below the floor 0.7",
    )
    ok, why = passes_gate({"f1_macro": 0.8}, {"f1_macro": 0.85}, 0.7)
    assert not ok and "below the champion's 0.850" in why


def test_gate_refuses_a_candidate_over_the_latency_budget_and_reports_the_cost():
    ok, why = passes_gate({"f1_macro": 0.99}, {"f1_macro": 0.5}, 0.7, candidate_ms=40.0, budget_ms=29.0)
    assert (ok, why) == (False, "predict 40.0 ms CPU per row over the latency budget 29.0 ms")
    ok, why = passes_gate({"f1_macro": 0.99}, {"f1_macro": 0.5}, 0.7, candidate_ms=11.0, budget_ms=29.0)
    assert ok and why.endswith("predict 11.0 ms CPU per row (budget 29.0 ms)")


def test_budget_is_the_guardrail_limit_on_the_champion_when_that_is_tighter():
    guardrail = {"guardrail_margin": 0.5, "guardrail_slack_ms": 20}
    assert latency_budget_ms(budget_ms=50, champion_single_row_ms=6, **guardrail) == 29
    assert latency_budget_ms(budget_ms=25, champion_single_row_ms=6, **guardrail) == 25
    assert latency_budget_ms(budget_ms=50, champion_single_row_ms=None, **guardrail) == 50


def test_gate_refuses_a_candidate_whose_interval_leaves_a_larger_loss_open():
    better, champion = {"f1_macro": 0.90}, {"f1_macro": 0.88}

    ok, why = passes_gate(better, champion, 0.7, interval=(-0.05, 0.09), max_loss=0.02)
    assert (ok, why) == (
        False,
        "holdout F1 0.900 vs the champion's 0.880, difference interval [-0.050, +0.090]: a loss of more than 0.02 "
        "is not ruled out",
    )
    ok, why = passes_gate(better, champion, 0.7, interval=(-0.01, 0.05), max_loss=0.02)
    assert ok and why == "holdout F1 0.900 >= floor 0.7 and >= champion's 0.880, difference interval [-0.010, +0.050]"


def test_gate_checks_the_point_estimate_before_the_interval():
    ok, why = passes_gate({"f1_macro": 0.85}, {"f1_macro": 0.88}, 0.7, interval=(-0.06, 0.0), max_loss=0.02)
    assert not ok and "below the champion's 0.880" in why
