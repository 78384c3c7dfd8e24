"""The retrain's quality gate and the latency budget a candidate must fit: plain policy, no I/O."""

from __future__ import annotations


def latency_budget_ms(
    *, budget_ms: float, champion_single_row_ms: float | None, guardrail_margin: float, guardrail_slack_ms: float
) -> float:
    """The CPU ms a candidate's single-row predict may cost to be worth an experiment.

    A candidate above the A/B latency guardrail's limit relative to the champion would be rolled back by the
    guardrail, so it is not worth training into a challenger: the budget is the configured one, tightened to the
    guardrail's limit on the champion's own cost measured on this machine.

    Args:
        budget_ms: The configured budget.
        champion_single_row_ms: The champion's measured cost (None: unknown, only the configured budget applies).
        guardrail_margin: The guardrail's relative margin.
        guardrail_slack_ms: The guardrail's absolute slack (its practical floor).

    Returns:
        The budget in CPU milliseconds per single-row predict.
    """
    if champion_single_row_ms is None:
        return budget_ms
    return min(budget_ms, champion_single_row_ms * (1 + guardrail_margin) + guardrail_slack_ms)


def passes_gate(
    candidate: dict[str, float],
    champion: dict[str, float],
    min_f1: float,
    *,
    candidate_ms: float | None = None,
    budget_ms: float | None = None,
    interval: tuple[float, float] | None = None,
    max_loss: float = 0.0,
) -> tuple[bool, str]:
    """A candidate must fit the latency budget, reach the F1 floor, match the champion and not plausibly lose to it.

    The checks, in order: the latency budget; the absolute F1 floor; the point estimate (candidate F1 at least the
    champion's on the same rows); and, given the interval on candidate minus champion F1, its lower bound must not
    be below `-max_loss`: a holdout too small to rule out a loss larger than that is no evidence for an experiment.

    Args:
        candidate: The candidate's holdout metrics (`f1_macro`).
        champion: The champion's metrics on the same holdout rows.
        min_f1: The absolute F1 floor.
        candidate_ms: The candidate's single-row predict cost in CPU ms (None: not measured).
        budget_ms: The latency budget (None: none).
        interval: The interval on the F1 difference, candidate minus champion (None: point estimates only).
        max_loss: The largest F1 loss the interval may leave open.

    Returns:
        (passed, why), the reason naming the figures it rests on.
    """
    f1, champion_f1 = candidate["f1_macro"], champion["f1_macro"]
    cost = "" if candidate_ms is None else f"; predict {candidate_ms:.1f} ms CPU per row"
    if budget_ms is not None and candidate_ms is not None:
        cost += f" (budget {budget_ms:.1f} ms)"
        if candidate_ms > budget_ms:
            return False, f"predict {candidate_ms:.1f} ms CPU per row over the latency budget {budget_ms:.1f} ms"
    if f1 < min_f1:
        return False, f"holdout F1 {f1:.3f} below the floor {min_f1}{cost}"
    if f1 < champion_f1:
        return False, f"holdout F1 {f1:.3f} below the champion's {champion_f1:.3f} on the same rows{cost}"
    shown = "" if interval is None else f", difference interval [{interval[0]:+.3f}, {interval[1]:+.3f}]"
    if interval is not None and interval[0] < -max_loss:
        return False, (
            f"holdout F1 {f1:.3f} vs the champion's {champion_f1:.3f}{shown}: a loss of more than {max_loss:g} "
            f"is not ruled out{cost}"
        )
    return True, f"holdout F1 {f1:.3f} >= floor {min_f1} and >= champion's {champion_f1:.3f}{shown}{cost}"
