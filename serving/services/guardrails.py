"""The router's own look at the error guardrail, on live counts, so a broken challenger is reported at once.

The statistic is the A/B flow's (`flows.lib.experiment.error_guardrail`, an always-valid confidence sequence),
imported rather than copied: the router and the flow must never disagree on what a breach is.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.api import ExperimentPlan


@dataclass(frozen=True)
class Breach:
    """A breached guardrail and what it rests on."""

    guardrail: str
    detail: str
    champion: tuple[int, int]
    """(assigned, failed) requests of the champion."""
    challenger: tuple[int, int]


def error_breach(plan: ExperimentPlan, counts: dict[str, tuple[int, int]]) -> Breach | None:
    """The error-rate guardrail of a plan on (assigned, failed) counts per arm; None while it holds.

    Args:
        plan: The experiment's plan (margin and alpha).
        counts: Arm name to (assigned requests, failed requests).
    """
    from flows.lib.experiment import ERROR_GUARDRAIL_TAU, error_guardrail

    champion, challenger = counts.get("champion", (0, 0)), counts.get("challenger", (0, 0))
    if challenger[1] == 0:
        return None  # no failure, no breach: skip the statistics on the common path
    result = error_guardrail(
        champion[0],
        champion[1],
        challenger[0],
        challenger[1],
        margin=plan.guardrail_error_margin,
        alpha=plan.alpha,
        tau=ERROR_GUARDRAIL_TAU,
    )
    return None if result.holds else Breach(result.name, result.detail, champion, challenger)
