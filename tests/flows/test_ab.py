"""The chi-squared A/B decision on router outcome counts."""

import pytest
from scipy.stats import chi2_contingency

from contracts.api import ArmOutcome, Outcomes
from flows.lib.ab import decide


def outcomes(champion: tuple[int, int], challenger: tuple[int, int] | None) -> Outcomes:
    arms = [
        ArmOutcome(
            arm="champion",
            model_version="1",
            requests=champion[0] * 2,
            labelled=champion[0],
            correct=champion[1],
            incorrect=champion[0] - champion[1],
        )
    ]
    if challenger is not None:
        arms.append(
            ArmOutcome(
                arm="challenger",
                model_version="2",
                requests=challenger[0] * 2,
                labelled=challenger[0],
                correct=challenger[1],
                incorrect=challenger[0] - challenger[1],
            )
        )
    return Outcomes(
        model_name="m",
        experiment_id="v1-vs-v2" if challenger else "v1",
        champion_version="1",
        challenger_version="2" if challenger else None,
        ab_split_b=0.5,
        arms=arms,
    )


def test_no_challenger_means_no_experiment():
    assert decide(outcomes((200, 100), None), alpha=0.05, min_samples_per_arm=10).decision == "NO_EXPERIMENT"


def test_waits_for_the_minimum_sample_in_both_arms():
    result = decide(outcomes((200, 60), (99, 95)), alpha=0.05, min_samples_per_arm=100)
    assert (result.decision, result.p_value) == ("CONTINUE", None)
    assert "challenger 99" in result.reason


def test_promotes_a_significantly_better_challenger_with_scipys_p_value():
    result = decide(outcomes((200, 70), (200, 180)), alpha=0.05, min_samples_per_arm=100)
    expected = chi2_contingency([[70, 130], [180, 20]])
    assert result.decision == "PROMOTE"
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.chi2 == pytest.approx(expected.statistic)
    assert (result.champion.accuracy, result.challenger.accuracy) == (0.35, 0.9)


def test_rolls_back_a_significantly_worse_challenger():
    assert decide(outcomes((200, 180), (200, 70)), alpha=0.05, min_samples_per_arm=100).decision == "ROLLBACK"


def test_continues_without_significance():
    result = decide(outcomes((200, 150), (200, 155)), alpha=0.05, min_samples_per_arm=100)
    assert result.decision == "CONTINUE"
    assert result.p_value > 0.05


def test_identical_perfect_arms_continue_rather_than_divide_by_zero():
    result = decide(outcomes((150, 150), (150, 150)), alpha=0.05, min_samples_per_arm=100)
    assert (result.decision, result.p_value) == ("CONTINUE", 1.0)
