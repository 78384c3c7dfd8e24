"""How to train at a given size: which models on which rows, how many tuning iterations, whether tuning is kept,
whether to rebalance the classes. Plain decisions, no PyCaret: `flows.lib.training` carries them out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

ImbalanceMode = Literal["auto", "always", "never"]


@dataclass(frozen=True)
class ScalePolicy:
    """What changes once the training data is large (all from settings)."""

    rows: int
    """From this many training rows on, the policy applies."""
    folds: int
    """Cross-validation folds at scale (at most the usual number)."""
    sample_rows: int
    """Rows of the seeded sample the `sampled` models train on."""
    sampled: tuple[str, ...]
    """Models whose cost grows badly with rows but that stay useful on a sample (ensembles of deep trees, k-NN)."""
    dropped: tuple[str, ...]
    """Models left out at scale (their cost grows faster than linearly even to fit a sample well)."""


@dataclass(frozen=True)
class ScalePlan:
    """Which models train on which rows, with how many folds: recorded with the run."""

    rows: int
    """Training rows."""
    folds: int
    full: tuple[str, ...]
    """Models trained on every row."""
    sampled: tuple[str, ...] = ()
    """Models trained on a seeded sample of `sample_rows` rows."""
    sample_rows: int = 0
    dropped: tuple[str, ...] = ()
    at_scale: bool = False

    def as_dict(self) -> dict:
        """The plan as plain JSON-ready values."""
        return asdict(self)


def plan_scale(rows: int, models: list[str], folds: int, policy: ScalePolicy | None) -> ScalePlan:
    """Adapt the model list and the folds to the data size.

    Below `policy.rows` (or without a policy) every model trains on every row with `folds` folds. From there on,
    `dropped` models are left out, `sampled` ones train on a seeded sample of `sample_rows` rows (only when the data
    is larger than that), and the folds drop to `policy.folds`.

    Args:
        rows: Training rows.
        models: PyCaret model ids, in the configured order.
        folds: The usual cross-validation folds.
        policy: The scale policy (None: never adapt).

    Returns:
        The plan.

    Raises:
        ValueError: When no model is left to train.
    """
    if policy is None or rows < policy.rows:
        return ScalePlan(rows=rows, folds=folds, full=tuple(models))
    kept = [m for m in models if m not in policy.dropped]
    sample = policy.sample_rows if rows > policy.sample_rows else 0
    sampled = tuple(m for m in kept if m in policy.sampled) if sample else ()
    full = tuple(m for m in kept if m not in sampled)
    if not kept:
        raise ValueError(f"every model of {models} is dropped at {rows} rows: keep one out of `dropped`")
    return ScalePlan(
        rows=rows,
        folds=max(2, min(folds, policy.folds)),
        full=full,
        sampled=sampled,
        sample_rows=sample,
        dropped=tuple(m for m in models if m in policy.dropped),
        at_scale=True,
    )


@dataclass(frozen=True)
class TuningPolicy:
    """The tuning budget (from settings)."""

    iterations: int
    """At most this many hyperparameter draws."""
    seconds: float
    """Roughly at most this long: the draws are cut to what fits, from the model's measured time per fold."""


def tuning_iterations(policy: TuningPolicy, *, seconds_per_fold: float, folds: int) -> int:
    """Hyperparameter draws that fit the budget.

    A draw costs one cross-validation (`folds` fits and scorings, `seconds_per_fold` each, as compare_models
    measured for the untuned model); tune_model then cross-validates the best draw once more. So the draws are
    `seconds / (folds * seconds_per_fold) - 1`, at most `policy.iterations`.

    Args:
        policy: The budget.
        seconds_per_fold: Seconds of one fold of the untuned model (PyCaret's `TT (Sec)`).
        folds: Cross-validation folds.

    Returns:
        The number of draws, 0 when not even one fits (no tuning).
    """
    if policy.iterations <= 0 or policy.seconds <= 0:
        return 0
    round_seconds = max(seconds_per_fold, 1e-3) * folds
    return max(0, min(policy.iterations, math.floor(policy.seconds / round_seconds) - 1))


@dataclass(frozen=True)
class TuningOutcome:
    """What tuning the winner did: recorded with the run and shown in the artifact."""

    model_id: str
    iterations: int
    """Draws tried (0: not tuned, see `reason`)."""
    untuned_cv_f1: float
    tuned_cv_f1: float | None = None
    kept: bool = False
    """Whether the tuned model replaced the untuned one."""
    reason: str = ""
    seconds: float = 0.0
    params: dict[str, str] = field(default_factory=dict)
    """The tuned model's hyperparameters that differ from the untuned one's."""
    tuned_single_row_ms: float | None = None
    """Serving cost of the tuned model (CPU ms per single-row predict)."""

    def as_dict(self) -> dict:
        """The outcome as plain JSON-ready values."""
        return asdict(self)


def keep_tuned(
    untuned_cv_f1: float, tuned_cv_f1: float, *, tuned_ms: float | None = None, budget_ms: float | None = None
) -> tuple[bool, str]:
    """The tuned model is kept only if it beats the untuned one on cross-validation and still fits the latency budget.

    Both scores come from the same folds of the same training split. A tie keeps the untuned model: tuning that
    changes nothing measurable is not worth a different model.

    Args:
        untuned_cv_f1: Mean CV F1 of the untuned model.
        tuned_cv_f1: Mean CV F1 of the tuned model.
        tuned_ms: The tuned model's single-row predict cost in CPU ms (None: not measured).
        budget_ms: The latency budget (None: none).

    Returns:
        (kept, why).
    """
    if tuned_cv_f1 <= untuned_cv_f1:
        return False, f"tuned CV F1 {tuned_cv_f1:.4f} does not beat the untuned {untuned_cv_f1:.4f}"
    if budget_ms is not None and tuned_ms is not None and tuned_ms > budget_ms:
        return False, (
            f"tuned CV F1 {tuned_cv_f1:.4f} beats {untuned_cv_f1:.4f}, but its predict costs {tuned_ms:.1f} ms CPU "
            f"per row, over the latency budget {budget_ms:.1f} ms"
        )
    return True, f"tuned CV F1 {tuned_cv_f1:.4f} beats the untuned {untuned_cv_f1:.4f}"


@dataclass(frozen=True)
class ImbalancePolicy:
    """When to rebalance the classes in training (PyCaret's `fix_imbalance`, from settings)."""

    mode: ImbalanceMode
    """`auto`: when the ratio reaches `ratio`; `always`; `never`."""
    ratio: float
    """Largest over smallest class count from which `auto` rebalances."""
    method: str
    """PyCaret's `fix_imbalance_method` (an imblearn resampler name such as `smote` or `randomoversampler`)."""


@dataclass(frozen=True)
class ImbalanceCheck:
    """The class balance of the training rows and what was done about it."""

    ratio: float
    """Largest over smallest count of the classes present (1.0 for a single class)."""
    counts: dict[str, int]
    fixed: bool
    method: str = ""
    reason: str = ""

    def as_dict(self) -> dict:
        """The check as plain JSON-ready values."""
        return asdict(self)


def check_imbalance(counts: Mapping[str, int], policy: ImbalancePolicy | None) -> ImbalanceCheck:
    """Detect class imbalance and decide whether training rebalances.

    Args:
        counts: Rows per class label.
        policy: The policy (None: never rebalance).

    Returns:
        The ratio, the counts and the decision with its reason.
    """
    present = {str(k): int(v) for k, v in counts.items() if v > 0}
    ratio = max(present.values()) / min(present.values()) if present else 1.0
    if policy is None or policy.mode == "never":
        return ImbalanceCheck(ratio, present, fixed=False, reason="rebalancing is off")
    if policy.mode == "always":
        return ImbalanceCheck(ratio, present, fixed=True, method=policy.method, reason="rebalancing is always on")
    if ratio >= policy.ratio:
        why = f"largest/smallest class {ratio:.1f} >= {policy.ratio:g}"
        return ImbalanceCheck(ratio, present, fixed=True, method=policy.method, reason=why)
    return ImbalanceCheck(ratio, present, fixed=False, reason=f"largest/smallest class {ratio:.1f} < {policy.ratio:g}")
