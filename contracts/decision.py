"""The A/B decision as a typed record: what `decide()` returns, what the flow reports and the registry keeps.

Turned into JSON in one place (`Decision.to_dict`); every reader (the report, the plot, the registry's audit, the
lineage) reads the keys defined here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from contracts.api import DecisionName, ExperimentPlan

Rule = Literal[
    "srm_all",
    "srm_labelled",
    "paused",
    "guardrail",
    "guardrail_pending",
    "non_inferiority_pending",
    "better",
    "worse",
    "max_duration",
    "too_few_labelled",
    "undecided",
]
"""Which rule of `flows.lib.ab_policy.decide` fired."""

WatchVerdict = Literal["REGRESSION", "HOLDS", "WATCHING", "DONE"]
"""The post-promotion watch: proven regression (roll back), kept its promise so far, too early, period over."""


class ArmSummary(msgspec.Struct, kw_only=True):
    """One arm's numbers at a look."""

    version: str
    assigned: int
    """Requests assigned: answered plus failed."""
    requests: int
    errors: int
    error_rate: float | None
    labelled: int
    correct: int
    accuracy: float | None
    """Correct / labelled answered requests (failures left out: for reading only)."""
    scored: int
    """Labelled answered requests plus failed ones: the primary metric's denominator."""
    scored_accuracy: float | None
    """The primary metric: correct / scored (a failed prediction is a miss)."""
    users: int | None
    labelled_users: int | None
    design_effect: float | None
    """Variance inflation by the users' correlation, from the arm's per-user sums (None: not reported)."""
    precision_macro: float | None = None
    recall_macro: float | None = None
    f1_macro: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None


class PrimaryTest(msgspec.Struct, kw_only=True):
    """The always-valid test of the accuracy lift (challenger minus champion)."""

    metric: str
    method: str
    d_hat: float
    cs_lower: float
    cs_upper: float
    confidence: float
    always_valid_p: float
    log_lambda: float
    variance: float
    tau: float


class SrmCheck(msgspec.Struct, kw_only=True):
    """The always-valid assignment-ratio test on one population: is the split between the arms the planned one?"""

    observed: tuple[int, int]
    """(champion, challenger)."""
    planned_share: float
    """The challenger's planned share."""
    log_bayes_factor: float
    """log of the Dirichlet-multinomial mixture against the planned split (a martingale under the planned split)."""
    p_value: float
    """Always-valid p-value: min(1, 1 / Bayes factor)."""
    threshold: float
    mismatch: bool


class SrmEvidence(msgspec.Struct, kw_only=True):
    all_traffic: SrmCheck
    """Users assigned."""
    labelled: SrmCheck
    """Users with a labelled request."""
    overridden: bool = False
    """An operator resumed the experiment after a pause: a mismatch is reported, not acted on."""


class Guardrail(msgspec.Struct, kw_only=True):
    """One guardrail at a look."""

    name: str
    holds: bool
    """False: a breach proven (rolls the challenger back)."""
    shown: bool = True
    """Non-inferiority shown (PROMOTE needs every guardrail shown); the latency guardrail is shown when it holds."""
    detail: str
    values: dict[str, Any] = {}


class PlainChi2(msgspec.Struct, kw_only=True):
    p_value: float
    note: str


class Samples(msgspec.Struct, kw_only=True):
    labelled_per_arm: int
    """Scored outcomes (labelled + failed) of the smaller arm."""
    planned_per_arm: int
    fixed_horizon_per_arm: int
    fraction_of_plan: float


class DecisionEvidence(msgspec.Struct, kw_only=True):
    """Every number a decision rests on."""

    rule: Rule
    arms: dict[str, ArmSummary]
    tau: float
    min_labelled_per_arm: int
    primary: PrimaryTest | None
    plain_chi2: PlainChi2
    srm: SrmEvidence
    guardrails: list[Guardrail]
    plan: ExperimentPlan
    elapsed_hours: float | None
    samples: Samples
    paused: bool = False


class Decision(msgspec.Struct, kw_only=True):
    """What to do with the challenger, why, what would change it, and the numbers behind it."""

    decision: DecisionName
    reason: str
    what_would_change: str
    """One sentence: what the next looks would have to show for another decision."""
    evidence: DecisionEvidence

    @property
    def rule(self) -> Rule:
        """The rule that fired."""
        return self.evidence.rule

    def to_dict(self) -> dict[str, Any]:
        """The decision as JSON-ready data (non-finite floats become null): the one place it is serialised."""
        return msgspec.json.decode(msgspec.json.encode(self, enc_hook=_plain))


def _plain(value: object) -> object:
    """numpy scalars (from scipy and numpy statistics) as Python numbers."""
    if hasattr(value, "item"):
        return value.item()  # type: ignore[attr-defined]
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


class WatchResult(msgspec.Struct, kw_only=True):
    """One look of the post-promotion watch at the new champion."""

    verdict: WatchVerdict
    reason: str
    model_version: str
    previous_version: str
    expected_accuracy: float
    """The experiment's estimate of the new champion's accuracy (its promise)."""
    previous_accuracy: float
    """The experiment's estimate of the previous champion's accuracy."""
    threshold: float
    """A proven accuracy below this is a regression."""
    accuracy: float | None
    cs_lower: float | None
    cs_upper: float | None
    scored: int
    elapsed_hours: float
    period_hours: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the one place a watch look is serialised)."""
        return msgspec.json.decode(msgspec.json.encode(self))


class WatchPromise(msgspec.Struct, kw_only=True):
    """What the experiment that promoted a version said about it, kept as `driftloop.watch.*` tags on the version."""

    version: str
    previous_version: str
    expected_accuracy: float
    """The experiment's estimate of the new champion's accuracy (failures as misses)."""
    previous_accuracy: float
    """Its estimate of the previous champion's."""
    tolerance: float
    """How far below its estimate the new champion may turn out: the estimate's standard error."""
    period_hours: float
    alpha: float
    tau: float
    promoted_at: datetime
    loop_id: str = ""

    @property
    def threshold(self) -> float:
        """A new champion proven below this regressed: its estimate less the tolerance, and never below the previous
        champion's level (proven worse than the old one is a regression whatever the estimate)."""
        return max(self.expected_accuracy - self.tolerance, self.previous_accuracy)
