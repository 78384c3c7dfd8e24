"""The retrain quality gate."""

from flows.retrain import passes_gate


def test_gate_needs_the_floor_and_the_champion():
    assert passes_gate({"f1_macro": 0.9}, {"f1_macro": 0.5}, 0.7)[0] is True
    assert passes_gate({"f1_macro": 0.6}, {"f1_macro": 0.5}, 0.7) == (
        False,
        "holdout F1 0.600 below the floor 0.7",
    )
    ok, why = passes_gate({"f1_macro": 0.8}, {"f1_macro": 0.85}, 0.7)
    assert not ok and "below the champion's 0.850" in why
