"""A/B decision on the outcome counts the router recorded: a chi-squared test of correct vs incorrect per arm."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from scipy.stats import chi2_contingency

from contracts.api import Outcomes

Decision = Literal["PROMOTE", "ROLLBACK", "CONTINUE", "NO_EXPERIMENT"]


@dataclass(frozen=True)
class ArmStats:
    """Labelled outcomes of one arm."""

    version: str
    labelled: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.labelled if self.labelled else 0.0


@dataclass(frozen=True)
class AbResult:
    """The decision and the evidence behind it."""

    decision: Decision
    reason: str
    champion: ArmStats | None
    challenger: ArmStats | None
    p_value: float | None
    chi2: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def _arm(outcomes: Outcomes, name: str) -> ArmStats | None:
    arm = outcomes.arm(name)  # type: ignore[arg-type]
    return None if arm is None else ArmStats(version=arm.model_version, labelled=arm.labelled, correct=arm.correct)


def decide(outcomes: Outcomes, *, alpha: float, min_samples_per_arm: int) -> AbResult:
    """Decide on one look at the counts.

    Args:
        outcomes: Counts per arm of the current experiment, as the router reports them.
        alpha: Significance level of the two-sided chi-squared test.
        min_samples_per_arm: Labelled outcomes each arm needs before any decision.

    Returns:
        PROMOTE when the challenger is significantly more accurate, ROLLBACK when significantly less,
        CONTINUE otherwise; NO_EXPERIMENT when there is no challenger.
    """
    champion, challenger = _arm(outcomes, "champion"), _arm(outcomes, "challenger")
    if outcomes.challenger_version is None or champion is None or challenger is None:
        return AbResult("NO_EXPERIMENT", "no challenger is being served", champion, challenger, None, None)
    short = [a for a in (champion, challenger) if a.labelled < min_samples_per_arm]
    if short:
        return AbResult(
            "CONTINUE",
            f"waiting for {min_samples_per_arm} labelled outcomes per arm "
            f"(champion {champion.labelled}, challenger {challenger.labelled})",
            champion,
            challenger,
            None,
            None,
        )
    table = [
        [champion.correct, champion.labelled - champion.correct],
        [challenger.correct, challenger.labelled - challenger.correct],
    ]
    # A column of zeros (both arms always right, or always wrong) leaves nothing to test.
    if min(table[0][0] + table[1][0], table[0][1] + table[1][1]) == 0:
        return AbResult("CONTINUE", "both arms have identical outcomes", champion, challenger, 1.0, 0.0)
    chi2, p_value, _, _ = chi2_contingency(table)
    p_value, chi2 = float(p_value), float(chi2)
    lift = challenger.accuracy - champion.accuracy
    summary = (
        f"accuracy champion v{champion.version} {champion.accuracy:.3f} (n={champion.labelled}) vs "
        f"challenger v{challenger.version} {challenger.accuracy:.3f} (n={challenger.labelled}), p={p_value:.2g}"
    )
    if p_value < alpha and lift > 0:
        return AbResult("PROMOTE", f"challenger significantly better: {summary}", champion, challenger, p_value, chi2)
    if p_value < alpha and lift < 0:
        return AbResult("ROLLBACK", f"challenger significantly worse: {summary}", champion, challenger, p_value, chi2)
    return AbResult("CONTINUE", f"no significant difference yet: {summary}", champion, challenger, p_value, chi2)
