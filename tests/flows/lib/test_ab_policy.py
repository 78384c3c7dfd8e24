"""The A/B statistics and policy: sample size, always-valid tests, SRM, guardrails and every decision path."""

import json
import math
from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np
import pytest
from scipy.stats import betabinom, binom, binomtest, chi2_contingency
from sklearn.metrics import precision_recall_fscore_support

from contracts.api import ArmOutcome, ConfusionCell, ExperimentPlan, LatencyBucket, Outcomes, UserSums
from flows.lib.ab_policy import (
    MIN_LABELLED_PER_ARM,
    MIN_MATCHED_BUCKETS,
    ArmEvidence,
    BucketLatency,
    Evidence,
    decide,
    error_guardrail,
    evidence_from_outcomes,
    latency_guardrail,
)
from flows.lib.ab_stats import (
    SRM_CONCENTRATION,
    arm_metrics,
    plain_chi2,
    plan_sample_size,
    proportion_difference_test,
    sequential_power,
    srm_levels,
    srm_test,
)

START = datetime(2024, 6, 1, 12, tzinfo=UTC)


def ev(decision) -> dict:
    """The decision's evidence as its JSON form."""
    return decision.to_dict()["evidence"]


def plan(**overrides) -> ExperimentPlan:
    fields = {
        "champion_version": "1",
        "challenger_version": "2",
        "alpha": 0.05,
        "power": 0.8,
        "mde": 0.05,
        "baseline": 0.8,
        "min_samples_per_arm": 1750,
        "fixed_horizon_samples_per_arm": 906,
        "ab_split_b": 0.5,
        "max_duration_hours": 72.0,
    }
    return ExperimentPlan(**(fields | overrides))


def arm(
    name: str, *, labelled: int, correct: int, requests: int | None = None, errors: int = 0, p95: float = 40.0
) -> ArmOutcome:
    """An arm of a binary classifier whose mistakes are split evenly between the two labels."""
    wrong = labelled - correct
    confusion = [
        ConfusionCell(label="yes", prediction="yes", count=correct // 2),
        ConfusionCell(label="no", prediction="no", count=correct - correct // 2),
        ConfusionCell(label="yes", prediction="no", count=wrong // 2),
        ConfusionCell(label="no", prediction="yes", count=wrong - wrong // 2),
    ]
    return ArmOutcome(
        arm=name,
        model_version="1" if name == "champion" else "2",
        requests=2 * labelled if requests is None else requests,
        labelled=labelled,
        correct=correct,
        incorrect=wrong,
        errors=errors,
        latency_p50_ms=p95 / 2,
        latency_p95_ms=p95,
        confusion=[c for c in confusion if c.count],
    )


def buckets(champion: list[tuple[float, float]], challenger: list[tuple[float, float]], n: int = 20):
    """Latency buckets one minute apart: (p95 ms, compute ms) per bucket for each arm, `n` requests each."""
    return [
        LatencyBucket(
            start=START + timedelta(minutes=i), arm=name, requests=n, latency_p95_ms=p95, compute_ms_median=cpu
        )
        for name, values in (("champion", champion), ("challenger", challenger))
        for i, (p95, cpu) in enumerate(values)
    ]


def look(
    champion: ArmOutcome,
    challenger: ArmOutcome,
    *,
    hours: float = 5.0,
    latency: list[LatencyBucket] | None = None,
    prior_latency_breaches: int = 0,
    **plan_overrides,
) -> Evidence:
    outcomes = Outcomes(
        model_name="m",
        experiment_id="v1-vs-v2",
        champion_version="1",
        challenger_version="2",
        ab_split_b=0.5,
        arms=[champion, challenger],
        started_at=START,
        latency_buckets=latency or [],
    )
    return evidence_from_outcomes(
        outcomes,
        plan(**plan_overrides),
        START + timedelta(hours=hours),
        prior_latency_breaches=prior_latency_breaches,
    )


def accuracies(correct_champion: int, correct_challenger: int, n: int = 2000) -> Evidence:
    champion = arm("champion", labelled=n, correct=correct_champion)
    return look(champion, arm("challenger", labelled=n, correct=correct_challenger))


# --- sample size ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "baseline,mde,expected",
    [
        # (1.959964 * sqrt(2 * .825 * .175) + 0.841621 * sqrt(.8 * .2 + .85 * .15))^2 / .05^2
        #   = (1.053197 + 0.451269)^2 / 0.0025 = 905.37 -> 906
        (0.80, 0.05, 906),
        # (1.959964 * sqrt(2 * .55 * .45) + 0.841621 * sqrt(.5 * .5 + .6 * .4))^2 / .1^2
        #   = (1.378958 + 0.589135)^2 / 0.01 = 387.34 -> 388 (the usual textbook answer for 50% vs 60%)
        (0.50, 0.10, 388),
    ],
)
def test_fixed_horizon_size_matches_the_textbook_formula(baseline, mde, expected):
    assert plan_sample_size(baseline=baseline, mde=mde, alpha=0.05, power=0.8)[1] == expected


def test_sequential_size_is_the_smallest_n_with_the_power_and_exceeds_the_fixed_one():
    sequential, fixed = plan_sample_size(baseline=0.8, mde=0.05, alpha=0.05, power=0.8)
    power_at = lambda n: sequential_power(n, baseline=0.8, mde=0.05, alpha=0.05, tau=0.05)  # noqa: E731
    assert power_at(sequential) >= 0.8 > power_at(sequential - 1)
    assert fixed < sequential < 3 * fixed
    assert plan_sample_size(baseline=0.8, mde=0.05, alpha=0.05, power=0.8, tau=0.05)[0] == sequential


def test_sample_size_rejects_a_lift_beyond_perfect_accuracy_and_accepts_one_up_to_it():
    with pytest.raises(ValueError, match="baseline <= 1 - mde"):
        plan_sample_size(baseline=0.97, mde=0.05, alpha=0.05, power=0.8)
    sequential, fixed = plan_sample_size(baseline=0.95, mde=0.05, alpha=0.05, power=0.8)
    assert 1 <= fixed < sequential


# --- the always-valid test ------------------------------------------------------------------------------------


def test_confidence_sequence_contains_the_estimate_and_shrinks_with_n():
    widths = []
    for n in (100, 400, 1600, 6400):
        result = proportion_difference_test(n, int(0.80 * n), n, int(0.83 * n), alpha=0.05, tau=0.05)
        assert result.lower <= result.d_hat <= result.upper
        assert result.d_hat == pytest.approx(0.03)
        widths.append(result.upper - result.lower)
    assert widths == sorted(widths, reverse=True) and widths[-1] < widths[0] / 4


def test_zero_outside_the_confidence_sequence_iff_p_at_most_alpha():
    rng = np.random.default_rng(7)
    seen = {True: 0, False: 0}
    for _ in range(2000):
        n_a, n_b = rng.integers(10, 3000, size=2)
        x_a = rng.binomial(n_a, 0.8)
        x_b = rng.binomial(n_b, rng.uniform(0.74, 0.86))
        for alpha in (0.05, 0.01):
            result = proportion_difference_test(int(n_a), int(x_a), int(n_b), int(x_b), alpha=alpha, tau=0.05)
            rejects = result.lower > 0 or result.upper < 0
            assert rejects == (result.p_value <= alpha)
            seen[rejects] += 1
    assert min(seen.values()) > 100  # both sides of the boundary were exercised


def test_p_value_is_one_over_the_mixture_likelihood_ratio():
    result = proportion_difference_test(1000, 800, 1000, 850, alpha=0.05, tau=0.05)
    assert result.p_value == pytest.approx(math.exp(-result.log_lambda))
    v, t2 = result.variance, 0.05**2
    by_hand = math.sqrt(v / (v + t2)) * math.exp(t2 * 0.05**2 / (2 * v * (v + t2)))
    assert math.exp(result.log_lambda) == pytest.approx(by_hand)


def test_all_correct_in_both_arms_has_a_finite_interval_and_no_difference():
    result = proportion_difference_test(500, 500, 500, 500, alpha=0.05, tau=0.05)
    assert result.d_hat == 0.0 and result.p_value == 1.0
    assert -0.05 < result.lower < 0 < result.upper < 0.05
    assert plain_chi2(500, 500, 500, 500) == 1.0
    decision = decide(look(arm("champion", labelled=500, correct=500), arm("challenger", labelled=500, correct=500)))
    assert decision.decision == "CONTINUE"
    json.dumps(decision.to_dict(), allow_nan=False)


def test_all_wrong_against_all_right_overflows_nothing():
    result = proportion_difference_test(200, 0, 200, 200, alpha=0.05, tau=0.05)
    assert result.p_value == 0.0 and result.log_lambda > 700 and math.isfinite(result.log_lambda)
    assert 0.9 < result.lower <= result.d_hat == result.upper == 1.0
    # With no failure in either arm, about a thousand requests per arm show the error rate's non-inferiority.
    champion = arm("champion", labelled=200, correct=0, requests=2000)
    decision = decide(look(champion, arm("challenger", labelled=200, correct=200, requests=2000)))
    assert decision.decision == "PROMOTE", decision.reason
    json.dumps(decision.to_dict(), allow_nan=False)


def test_plain_chi2_matches_scipy_and_is_reported_as_not_peeking_safe():
    assert plain_chi2(1000, 800, 1000, 850) == pytest.approx(chi2_contingency([[800, 200], [850, 150]])[1])
    evidence = decide(look(arm("champion", labelled=1000, correct=800), arm("challenger", labelled=1000, correct=850)))
    assert "not peeking-safe" in ev(evidence)["plain_chi2"]["note"]


# --- SRM, metrics, guardrails ---------------------------------------------------------------------------------


def test_srm_bayes_factor_is_the_beta_binomial_mixture_over_the_planned_binomial():
    """BF = BetaBinomial(n_b; n, c s, c (1 - s)) / Binomial(n_b; n, s): the binomial coefficients cancel."""
    for (n_a, n_b), split in (((5300, 4700), 0.5), ((700, 300), 0.3), ((12, 9), 0.4)):
        n, c = n_a + n_b, SRM_CONCENTRATION
        expected = betabinom.logpmf(n_b, n, c * split, c * (1 - split)) - binom.logpmf(n_b, n, split)
        result = srm_test((n_a, n_b), split)
        assert result.log_bayes_factor == pytest.approx(expected, rel=1e-9, abs=1e-9)
        assert result.p_value == pytest.approx(min(1.0, math.exp(-expected)))


def test_srm_flags_a_clear_mismatch_and_not_a_planned_split():
    assert srm_test((5300, 4700), 0.5).mismatch
    assert not srm_test((5030, 4970), 0.5).mismatch
    assert not srm_test((700, 300), 0.3).mismatch
    assert not srm_test((3, 0), 0.5).mismatch  # three users say nothing
    assert not srm_test((10, 0), 0.0).mismatch  # no challenger share planned: nothing to test


def test_the_srm_level_is_split_between_users_and_labelled_users():
    """The plan's SRM level holds over both tests together (a union bound), so each gets a share of it."""
    users, labelled = srm_levels(0.005)
    assert users + labelled == pytest.approx(0.005) and users > labelled > 0


def test_srm_is_always_valid_under_hourly_looks():
    """Under the planned split the mixture is a martingale: over 72 looks the false alarms stay under the level."""
    rng = np.random.default_rng(5)
    experiments, looks, per_look, level = 2000, 72, 200, 0.01
    flagged = 0
    for _ in range(experiments):
        challenger = np.cumsum(rng.binomial(per_look, 0.5, size=looks))
        total = per_look * np.arange(1, looks + 1)
        flagged += any(
            srm_test((int(t - b), int(b)), 0.5, level).mismatch for t, b in zip(total, challenger, strict=True)
        )
    assert binomtest(flagged, experiments).proportion_ci(0.99, method="exact").high < level * 1.5
    assert flagged / experiments <= level


def test_arm_metrics_match_sklearn_on_the_expanded_pairs():
    cells = [("a", "a", 50), ("a", "b", 7), ("b", "b", 30), ("b", "c", 3), ("c", "a", 10)]
    y_true = [label for label, _, count in cells for _ in range(count)]
    y_pred = [prediction for _, prediction, count in cells for _ in range(count)]
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    expected = {
        "labelled": 100,
        "accuracy": 0.8,
        "precision_macro": pytest.approx(precision),
        "recall_macro": pytest.approx(recall),
        "f1_macro": pytest.approx(f1),
    }
    assert arm_metrics(cells) == expected
    assert arm_metrics([ConfusionCell(label=t, prediction=p, count=c) for t, p, c in cells]) == expected
    assert arm_metrics([])["accuracy"] is None


def errors(assigned: int, failed: int, version: str = "1") -> ArmEvidence:
    return ArmEvidence(version=version, requests=assigned - failed, errors=failed, labelled=0, correct=0)


def test_error_guardrail_shows_non_inferiority_for_equal_rates_and_breaches_past_the_margin():
    margins = plan(guardrail_error_margin=0.005, guardrail_error_margin_relative=0.25)
    equal = error_guardrail(errors(100_000, 2000), errors(100_000, 2000), margins)
    # margin = 0.25 x 0.02 + 0.005 = 0.01, and the CS of the difference lies below it.
    assert equal.holds and equal.shown and equal.values["margin"] == pytest.approx(0.01)
    assert equal.detail.startswith("non-inferiority shown")
    few = error_guardrail(errors(500, 10), errors(500, 10), margins)
    assert few.holds and not few.shown  # not breached, but not shown either: no PROMOTE yet
    worse = error_guardrail(errors(100_000, 2000), errors(100_000, 6000), margins)
    assert not worse.holds and worse.values["cs_lower"] > worse.values["margin"]
    assert worse.detail.startswith("BREACHED")
    empty = error_guardrail(errors(0, 0), errors(10, 10), margins)
    assert empty.holds and not empty.shown and empty.detail.startswith("not enough data")


def test_a_challenger_with_half_again_the_errors_is_not_promoted_however_accurate():
    """Champion 2% errors, challenger 3% (1.5x): the margin (1%) is never shown, so no PROMOTE; with more data the
    breach is proven (the difference is exactly the margin here, so it stays CONTINUE short of that)."""
    champion = arm("champion", labelled=2000, correct=1600, requests=9800, errors=200)
    challenger = arm("challenger", labelled=2000, correct=1800, requests=9700, errors=300)
    decision = decide(look(champion, challenger, guardrail_error_margin=0.005, guardrail_error_margin_relative=0.25))
    assert (decision.decision, decision.rule) == ("CONTINUE", "non_inferiority_pending")
    assert "error_rate non-inferiority is not shown" in decision.reason
    assert "falls below its margin" in decision.what_would_change


def test_failed_predictions_count_as_misses_in_the_primary_metric():
    """A challenger that fails on the hard inputs looks better on what it answers, not on what it was asked."""
    champion = arm("champion", labelled=2000, correct=1600, requests=4000, errors=0)
    # Answers 1800 labelled of which 1600 right (0.889), but failed 400 requests: 1600 / 2200 = 0.727 scored.
    challenger = arm("challenger", labelled=1800, correct=1600, requests=3600, errors=400)
    evidence = look(champion, challenger, guardrail_error_margin=0.5)  # a margin that lets errors through
    decision = decide(evidence)
    arms = ev(decision)["arms"]
    assert arms["challenger"]["accuracy"] == pytest.approx(1600 / 1800)
    assert arms["challenger"]["scored"] == 2200 and arms["challenger"]["scored_accuracy"] == pytest.approx(1600 / 2200)
    assert ev(decision)["primary"]["d_hat"] == pytest.approx(1600 / 2200 - 0.8)
    assert decision.decision == "ROLLBACK" and decision.rule == "worse"


def latency(values: list[LatencyBucket], **kw):
    return latency_guardrail([BucketLatency.from_contract(b) for b in values], **({"alpha": 0.05} | kw))


def test_latency_guardrail_needs_matched_buckets_with_requests_in_both_arms():
    slow = [(400.0, 300.0)] * (MIN_MATCHED_BUCKETS - 1)
    short = latency(buckets([(40.0, 5.0)] * len(slow), slow), margin=0.25, slack_ms=1.0)
    assert short.holds and short.detail.startswith("not enough data")
    # Buckets where an arm answered fewer than MIN_BUCKET_REQUESTS requests are not compared.
    sparse = latency(buckets([(40.0, 5.0)] * 10, [(400.0, 300.0)] * 10, n=4), margin=0.25, slack_ms=1.0)
    assert sparse.holds and sparse.values["matched_buckets"] == 0


def test_latency_guardrail_allows_the_margin_plus_slack_and_catches_a_slower_model():
    champion = [(40.0, 10.0)] * 8
    within = latency(buckets(champion, [(50.9, 10.5)] * 8), margin=0.25, slack_ms=1.0)  # 40 * 1.25 + 1 = 51
    assert within.holds and within.values["buckets_over_limit"] == 0
    slower = latency(buckets(champion, [(80.0, 40.0)] * 8), margin=0.25, slack_ms=1.0)
    assert not slower.holds and slower.values["sign_test_p"] == pytest.approx(0.5**8)
    assert slower.detail.startswith("BREACHED at 1 consecutive looks")


def test_load_that_inflates_a_small_model_cost_is_not_a_breach():
    """The demo's rollback: ExtraTrees (11 ms of CPU) against GaussianNB (6 ms) on a busy machine, p95 190 vs 110 ms.

    The p95s differ by far more than the margin in every bucket, but the models differ by 5 ms of CPU per request,
    under the 20 ms floor: load made the difference, and load is no reason to roll a better model back.
    """
    busy = latency(buckets([(110.0, 6.0)] * 10, [(190.0, 11.0)] * 10), margin=0.5, slack_ms=20.0)
    assert busy.holds and busy.values["buckets_over_limit"] == 10 and busy.values["compute_excess_ms"] == 5.0
    assert "costs no more than the 20 ms floor" in busy.detail


def test_equal_models_under_fluctuating_load_hold_in_matched_buckets():
    rng = np.random.default_rng(3)
    load = rng.uniform(1, 8, size=30)  # the machine's load factor, minute by minute, shared by both arms
    champion = [(12.0 * f * rng.uniform(0.8, 1.25), 8.0) for f in load]
    challenger = [(12.0 * f * rng.uniform(0.8, 1.25), 8.0) for f in load]
    result = latency(buckets(champion, challenger), margin=0.5, slack_ms=20.0)
    assert result.holds and result.values["breached_now"] is False


def test_a_latency_breach_rolls_back_only_once_it_persists_over_looks():
    slower = buckets([(40.0, 20.0)] * 8, [(120.0, 60.0)] * 8)
    first = latency(slower, margin=0.5, slack_ms=20.0, looks_needed=2, prior_breaches=0)
    assert first.holds and first.values["breached_now"] and first.values["streak"] == 1
    assert "breach seen at 1 of 2 looks" in first.detail
    second = latency(slower, margin=0.5, slack_ms=20.0, looks_needed=2, prior_breaches=1)
    assert not second.holds and second.values["streak"] == 2


# --- every decision path --------------------------------------------------------------------------------------


def test_invalid_on_a_sample_ratio_mismatch_of_all_traffic():
    decision = decide(
        look(
            arm("champion", labelled=2000, correct=1600, requests=5300),
            arm("challenger", labelled=2000, correct=1720, requests=4700),
        )
    )
    assert decision.decision == "INVALID" and decision.rule == "srm_all"
    assert "assigned users" in decision.reason and "p=" in decision.reason


def test_invalid_on_a_sample_ratio_mismatch_of_the_labelled_outcomes_only():
    decision = decide(
        look(
            arm("champion", labelled=2000, correct=1600, requests=5000),
            arm("challenger", labelled=1700, correct=1460, requests=5000),
        )
    )
    assert ev(decision)["srm"]["all_traffic"]["mismatch"] is False
    assert decision.decision == "INVALID" and decision.rule == "srm_labelled"
    assert "labelled users" in decision.reason


def test_rollback_on_an_error_rate_breach_even_when_more_accurate():
    decision = decide(
        look(
            arm("champion", labelled=2000, correct=1600, requests=4990, errors=10),
            arm("challenger", labelled=2000, correct=1800, requests=4700, errors=300),
        )
    )
    assert decision.decision == "ROLLBACK" and decision.rule == "guardrail"
    assert "error_rate BREACHED" in decision.reason


def test_rollback_on_a_persistent_latency_breach_even_when_more_accurate():
    champion, challenger = arm("champion", labelled=2000, correct=1600), arm("challenger", labelled=2000, correct=1800)
    slower = buckets([(40.0, 20.0)] * 8, [(120.0, 60.0)] * 8)
    # Seen once: not acted on, and not promoted either.
    first = decide(look(champion, challenger, latency=slower, prior_latency_breaches=0))
    assert first.decision == "CONTINUE" and first.rule == "guardrail_pending"
    second = decide(look(champion, challenger, latency=slower, prior_latency_breaches=1))
    assert second.decision == "ROLLBACK" and second.rule == "guardrail"
    assert "latency_p95 BREACHED at 2 consecutive looks" in second.reason


def test_a_far_better_challenger_on_a_busy_machine_is_promoted():
    champion, challenger = arm("champion", labelled=700, correct=340), arm("challenger", labelled=700, correct=699)
    busy = buckets([(110.0, 6.0)] * 10, [(190.0, 11.0)] * 10)
    decision = decide(look(champion, challenger, latency=busy, prior_latency_breaches=3))
    assert decision.decision == "PROMOTE", decision.reason


def test_promote_when_the_confidence_sequence_is_above_zero():
    decision = decide(accuracies(1600, 1720))
    assert decision.decision == "PROMOTE" and decision.rule == "better"
    assert ev(decision)["primary"]["cs_lower"] > 0
    assert all(g["holds"] for g in ev(decision)["guardrails"])


def test_rollback_when_the_challenger_is_significantly_worse():
    decision = decide(accuracies(1720, 1600))
    assert decision.decision == "ROLLBACK" and decision.rule == "worse"
    assert ev(decision)["primary"]["cs_upper"] < 0


def test_rollback_at_the_maximum_duration_without_a_win():
    champion, challenger = arm("champion", labelled=2000, correct=1600), arm("challenger", labelled=2000, correct=1620)
    assert decide(look(champion, challenger, hours=71.9)).decision == "CONTINUE"
    decision = decide(look(champion, challenger, hours=72.0))
    assert decision.decision == "ROLLBACK" and decision.rule == "max_duration"
    assert "no win within the maximum duration" in decision.reason


def test_continue_while_undecided_and_while_labels_are_few():
    undecided = decide(look(arm("champion", labelled=500, correct=400), arm("challenger", labelled=500, correct=410)))
    assert undecided.decision == "CONTINUE" and undecided.rule == "undecided"
    few = MIN_LABELLED_PER_ARM - 1
    waiting = decide(look(arm("champion", labelled=few, correct=0), arm("challenger", labelled=few, correct=few)))
    assert waiting.decision == "CONTINUE" and waiting.rule == "too_few_labelled"
    assert ev(waiting)["primary"] is None


def test_the_evidence_explains_the_decision_and_is_json_ready():
    decision = decide(accuracies(1600, 1720))
    evidence = json.loads(json.dumps(decision.to_dict(), allow_nan=False))["evidence"]
    champion, challenger = evidence["arms"]["champion"], evidence["arms"]["challenger"]
    assert (champion["labelled"], champion["correct"], challenger["correct"]) == (2000, 1600, 1720)
    assert challenger["accuracy"] == pytest.approx(0.86) and challenger["f1_macro"] == pytest.approx(0.86)
    assert evidence["primary"]["d_hat"] == pytest.approx(0.06) and evidence["tau"] == 0.05
    assert evidence["primary"]["always_valid_p"] <= 0.05 and evidence["plain_chi2"]["p_value"] < 1e-4
    assert set(evidence["srm"]) == {"all_traffic", "labelled", "overridden"}
    assert [g["name"] for g in evidence["guardrails"]] == ["error_rate", "latency_p95"]
    assert evidence["plan"]["mde"] == 0.05 and evidence["elapsed_hours"] == 5.0
    assert evidence["samples"] == {
        "labelled_per_arm": 2000,
        "planned_per_arm": 1750,
        "fixed_horizon_per_arm": 906,
        "fraction_of_plan": pytest.approx(2000 / 1750),
    }


def test_evidence_from_outcomes_fills_a_missing_arm_and_reads_naive_times_as_utc():
    outcomes = Outcomes(
        model_name="m",
        experiment_id="v1-vs-v2",
        champion_version="1",
        challenger_version="2",
        ab_split_b=0.5,
        arms=[arm("champion", labelled=30, correct=20)],
        started_at=START,
    )
    evidence = evidence_from_outcomes(outcomes, plan(), datetime(2024, 6, 1, 14, 30))
    assert evidence.elapsed_hours == 2.5
    assert (evidence.challenger.version, evidence.challenger.assigned, evidence.challenger.labelled) == ("2", 0, 0)
    # 60 requests to the champion and none to the challenger of a 50/50 split is a broken assignment.
    assert decide(evidence).decision == "INVALID"
    no_start = evidence_from_outcomes(msgspec.structs.replace(outcomes, started_at=None), plan(), START)
    assert no_start.elapsed_hours is None


def test_the_sample_ratio_is_checked_on_users_not_requests():
    # Balanced users, but the champion's users happen to be heavier: requests alone would cry mismatch.
    champion = msgspec.structs.replace(
        arm("champion", labelled=2000, correct=1600, requests=6000), users=500, labelled_users=450
    )
    challenger = msgspec.structs.replace(
        arm("challenger", labelled=1500, correct=1200, requests=4000), users=505, labelled_users=455
    )
    decision = decide(look(champion, challenger))
    assert ev(decision)["srm"]["all_traffic"]["observed"] == [500, 505]
    assert ev(decision)["srm"]["labelled"]["observed"] == [450, 455]
    assert decision.decision != "INVALID"


def test_an_experiment_still_invalid_at_the_maximum_duration_is_rolled_back():
    decision = decide(
        look(
            arm("champion", labelled=2000, correct=1600, requests=5300),
            arm("challenger", labelled=2000, correct=1600, requests=4700),
            hours=80.0,
        )
    )
    assert (decision.decision, decision.rule) == ("ROLLBACK", "max_duration")
    assert "still invalid at the maximum duration" in decision.reason


# --- pause, resume, and the sentence that says what would change ----------------------------------------------


def test_a_paused_experiment_stays_invalid_until_resumed_and_is_rolled_back_at_the_maximum_duration():
    champion, challenger = arm("champion", labelled=2000, correct=1600), arm("challenger", labelled=2000, correct=1720)
    outcomes = Outcomes(
        model_name="m", experiment_id="v1-vs-v2", champion_version="1", challenger_version="2", ab_split_b=0.5,
        arms=[champion, challenger], started_at=START, paused_at=START + timedelta(hours=1),
    )  # fmt: skip
    paused = decide(evidence_from_outcomes(outcomes, plan(), START + timedelta(hours=5)))
    assert (paused.decision, paused.rule) == ("INVALID", "paused")  # even with a win in the counts
    assert "resume" in paused.what_would_change
    late = decide(evidence_from_outcomes(outcomes, plan(), START + timedelta(hours=72)))
    assert (late.decision, late.rule) == ("ROLLBACK", "max_duration")


def test_after_a_resume_a_sample_ratio_mismatch_is_reported_not_acted_on():
    champion = arm("champion", labelled=2000, correct=1600, requests=5300)
    challenger = arm("challenger", labelled=2000, correct=1720, requests=4700)
    outcomes = Outcomes(
        model_name="m", experiment_id="v1-vs-v2", champion_version="1", challenger_version="2", ab_split_b=0.5,
        arms=[champion, challenger], started_at=START, resumed_at=START + timedelta(hours=2),
    )  # fmt: skip
    decision = decide(evidence_from_outcomes(outcomes, plan(), START + timedelta(hours=5)))
    assert decision.decision == "PROMOTE"
    srm = ev(decision)["srm"]
    assert srm["overridden"] and srm["all_traffic"]["mismatch"]


def test_every_decision_says_in_one_sentence_what_would_change_it():
    undecided = decide(look(arm("champion", labelled=500, correct=400), arm("challenger", labelled=500, correct=415)))
    assert undecided.rule == "undecided"
    assert undecided.what_would_change.startswith("PROMOTE once the interval's lower end")
    assert "more scored outcomes per arm" in undecided.what_would_change
    for decision in (decide(accuracies(1600, 1720)), decide(accuracies(1720, 1600)), undecided):
        assert decision.what_would_change.endswith(".") and decision.what_would_change.count(". ") == 0


def test_users_with_many_correlated_requests_widen_the_interval():
    """The same request counts, once as independent requests and once as 200 users of 10 alike requests each."""
    independent = decide(accuracies(1600, 1680))
    clustered = [
        msgspec.structs.replace(
            arm(name, labelled=2000, correct=correct),
            user_sums=UserSums(users=200, sum_n=2000, sum_x=correct, sum_nn=200 * 100, sum_xx=xx, sum_nx=10 * correct),
        )
        # Every user all right or all wrong: 160 (or 168) users right on all 10 requests.
        for name, correct, xx in (("champion", 1600, 160 * 100), ("challenger", 1680, 168 * 100))
    ]
    correlated = decide(look(*clustered))
    wide, narrow = ev(correlated)["primary"], ev(independent)["primary"]
    assert wide["d_hat"] == pytest.approx(narrow["d_hat"])
    assert wide["variance"] == pytest.approx(10 * narrow["variance"], rel=0.05)  # the design effect of ICC 1, m 10
    assert ev(correlated)["arms"]["champion"]["design_effect"] == pytest.approx(10, rel=0.05)
    assert independent.decision == "PROMOTE" and correlated.decision == "CONTINUE"
