"""The router's own watch on the error guardrail: it nudges the A/B flow to look now, it never decides.

The decision stays with the A/B evaluation flow and its always-valid statistics (the two sides meet only at the
router's HTTP API, MLflow aliases and Prefect events). The router only notices, on live counts, that the
challenger's error rate has gone past the champion's by more than the plan's margin, and emits
`driftloop.experiment.guardrail_breached` once, so that the automation runs an evaluation at once instead of at the
next scheduled look.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.api import ExperimentPlan
from contracts.registry import CHALLENGER, CHAMPION

MIN_ASSIGNED = 30
"""Requests per arm before the router looks at error rates at all (a handful of failures is no signal)."""


@dataclass(frozen=True)
class Breach:
    """A guardrail the live counts suggest is breached, and what that rests on."""

    guardrail: str
    detail: str
    champion: tuple[int, int]
    """(assigned, failed) requests of the champion."""
    challenger: tuple[int, int]


def error_breach(plan: ExperimentPlan, counts: dict[str, tuple[int, int]]) -> Breach | None:
    """Whether the challenger's error rate exceeds the champion's plus the plan's margin; None while it does not.

    Args:
        plan: The experiment's plan (its error margin).
        counts: Arm name to (assigned requests, failed requests).
    """
    champion, challenger = counts.get(CHAMPION, (0, 0)), counts.get(CHALLENGER, (0, 0))
    if challenger[1] == 0 or min(champion[0], challenger[0]) < MIN_ASSIGNED:
        return None
    rate_a, rate_b = champion[1] / champion[0], challenger[1] / challenger[0]
    # The same margin as the flow's non-inferiority test: relative x the champion's rate + absolute.
    margin = plan.guardrail_error_margin_relative * rate_a + plan.guardrail_error_margin
    if rate_b <= rate_a + margin:
        return None
    detail = (
        f"challenger error rate {rate_b:.4f} over the champion's {rate_a:.4f} + margin {margin:.4f} "
        f"({challenger[1]}/{challenger[0]} vs {champion[1]}/{champion[0]}); the A/B evaluation decides"
    )
    return Breach("error_rate", detail, champion, challenger)
