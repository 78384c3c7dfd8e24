"""The retrain's Prefect markdown artifact: the trigger, the data window, training and tuning, and the gate's evidence.

Plain string building on the records the retrain produced (no pandas, no PyCaret), so the flow module can import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from contracts.registry import CHALLENGER

if TYPE_CHECKING:
    from contracts.api import ExperimentPlan
    from flows.lib.comparison import HoldoutComparison
    from flows.lib.training import TrainResult
    from flows.lib.window import SourceRecord, WindowRecord


def _n(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ts(value: str | None) -> str:
    return "-" if not value else value.replace("+00:00", "Z")


def _started_by(trigger: str, drift_share: float | None, drifted_columns: list[str], report_url: str | None) -> str:
    if drift_share is None:
        return f"Started by **{trigger}**."
    columns = ", ".join(f"`{c}`" for c in drifted_columns) or "none named"
    link = f" ([drift report]({report_url}))" if report_url and report_url.startswith("http") else ""
    return f"Started by **{trigger}**: drift share {drift_share:.2f} on {columns}{link}."


def window_section(window: WindowRecord) -> str:
    """The data window: policy, rows per source with time bounds, and content hashes."""
    policy = window.policy

    def row(name: str, source: SourceRecord, what: str) -> str:
        return (
            f"| {name} | {what} | {source.available} | {source.rows} | {_ts(source.first_ts)} | {_ts(source.last_ts)} |"
        )

    days = f"{policy.days:g} day{'' if policy.days == 1 else 's'}"
    lines = [
        "## Data window",
        "",
        f"Policy: {policy.history_share:.0%} of the original training data (seeded), plus the labelled traffic of the "
        f"last {days}; {policy.holdout_share:.0%} of the requests the champion never saw (at least "
        f"{policy.min_holdout_rows}) held out for the gate; at most {policy.max_rows:,} training rows. "
        f"Window {_ts(window.since)} to {_ts(window.now)}.",
        "",
        "| source | what | available | used | first | last |",
        "|---|---|---|---|---|---|",
        row("history", window.history, f"original rows of run `{window.history_run_id}`"),
        row("traffic", window.traffic, f"labelled requests ({window.traffic_seen_by_champion} seen by the champion)"),
        row("gate holdout", window.holdout, "requests neither model trained on"),
        "",
        f"Training rows: **{window.training_rows:,}**{' (capped)' if window.capped else ''}; content hash "
        f"`{window.training_hash[:16]}`; holdout hash `{window.holdout_hash[:16]}`.",
    ]
    if window.note:
        lines += ["", f"Note: {window.note}."]
    return "\n".join(lines)


def training_section(result: TrainResult) -> str:
    """Scale plan, class balance, the candidates and the tuning outcome."""
    lines = ["## Training", ""]
    plan = result.scale
    if plan is not None:
        if plan.at_scale:
            sampled = ", ".join(plan.sampled) or "none"
            dropped = ", ".join(plan.dropped) or "none"
            lines.append(
                f"At scale ({plan.rows:,} rows): {plan.folds} folds; on every row: {', '.join(plan.full) or 'none'}; "
                f"on a seeded sample of {plan.sample_rows:,} rows: {sampled}; left out: {dropped}."
            )
        else:
            lines.append(f"{plan.rows:,} rows, {plan.folds} folds, every model on every row: {', '.join(plan.full)}.")
    if result.imbalance is not None:
        balance = result.imbalance
        action = f"rebalanced with `{balance.method}`" if balance.fixed else "not rebalanced"
        lines.append(f"Classes {action} ({balance.reason}).")
    lines += [
        "",
        f"Candidates (latency budget {_n(result.latency_budget_ms, 1)} ms CPU per row):",
        "",
        "| model | CV F1 | rows | CPU ms per row | CPU ms per 32 rows | within budget |",
        "|---|---|---|---|---|---|",
    ]
    for c in result.candidates:
        chosen = " (chosen)" if c.model_id == result.model_id else ""
        lines.append(
            f"| {c.model_id}{chosen} | {c.cv_f1:.3f} | {c.trained_rows:,} | {c.serving_cost.single_row_ms:.1f} | "
            f"{c.serving_cost.batch_ms:.1f} | {c.within_budget} |"
        )
    tuning = result.tuning
    lines += ["", "## Tuning", ""]
    if tuning is None:
        lines.append("Tuning is off.")
    elif tuning.iterations == 0:
        lines.append(f"`{tuning.model_id}` {tuning.reason}.")
    else:
        verdict = "**kept**" if tuning.kept else "**not kept**"
        untuned = next((c for c in result.candidates if c.model_id == tuning.model_id), None)
        untuned_ms = untuned.serving_cost.single_row_ms if untuned else None
        lines += [
            f"`{tuning.model_id}`: {tuning.iterations} random-search draws on F1 in {tuning.seconds:.1f} s; "
            f"tuned model {verdict}: {tuning.reason}.",
            "",
            "| | CV F1 | CPU ms per row |",
            "|---|---|---|",
            f"| untuned | {tuning.untuned_cv_f1:.4f} | {_n(untuned_ms, 1)} |",
            f"| tuned | {_n(tuning.tuned_cv_f1, 4)} | {_n(tuning.tuned_single_row_ms, 1)} |",
        ]
        if tuning.params:
            lines += [
                "",
                "Hyperparameters the tuned model changed: "
                + ", ".join(f"`{k}={v}`" for k, v in sorted(tuning.params.items())),
            ]
    return "\n".join(lines)


def gate_section(
    evidence: HoldoutComparison, *, passed: bool, why: str, max_loss: float, candidate_ms: float, champion_ms: float
) -> str:
    """The gate's decision and its evidence: both models on the same unseen rows and the interval on the difference."""
    f1 = evidence.f1
    lines = [
        "## Quality gate",
        "",
        f"**{'PASSED' if passed else 'FAILED'}**: {why}.",
        "",
        f"Both models scored on the same {f1.rows} held-out requests, which neither was trained on "
        f"(they disagree on {f1.disagreements}).",
        "",
        "| metric | candidate | champion |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v:.3f} | {_n(evidence.champion.get(k))} |" for k, v in evidence.candidate.items()]
    lines += [
        f"| predict, CPU ms per row | {candidate_ms:.1f} | {champion_ms:.1f} |",
        "",
        f"F1 difference (candidate - champion): **{f1.difference:+.3f}**, {f1.confidence:.0%} interval "
        f"[{f1.low:+.3f}, {f1.high:+.3f}] ({f1.method}, {f1.resamples} paired resamples); the gate refuses an "
        f"interval that leaves open a loss larger than {max_loss:g}.",
    ]
    return "\n".join(lines)


def summary(
    *,
    model_name: str,
    version: str,
    trigger: str,
    loop_id: str,
    drift_share: float | None,
    drifted_columns: list[str],
    report_url: str | None,
    window: WindowRecord,
    result: TrainResult,
    evidence: HoldoutComparison,
    passed: bool,
    why: str,
    champion_ms: float,
    max_loss: float,
) -> str:
    """The whole artifact of a retrain that trained a candidate.

    Args:
        model_name: Registered model.
        version: The candidate's version.
        trigger: What started the run.
        loop_id: The turn of the loop.
        drift_share: The drift share that triggered it (None: not drift).
        drifted_columns: The columns that drifted.
        report_url: The drift report.
        window: The data window's record.
        result: The training result.
        evidence: The gate's comparison on the holdout.
        passed: The gate's decision.
        why: Its reason (it names the latency budget).
        champion_ms: The champion's serving cost.
        max_loss: The gate's largest acceptable F1 loss.

    Returns:
        Markdown.
    """
    head = [
        f"# Retrain: {model_name} v{version} ({CHALLENGER if passed else 'gate failed'})",
        "",
        f"{_started_by(trigger, drift_share, drifted_columns, report_url)} Loop `{loop_id}`. Best model "
        f"`{result.model_id}` ({result.model_name}){' tuned' if result.tuned_kept else ''}, fitted on "
        f"{result.trained_rows:,} rows.",
    ]
    gate = gate_section(
        evidence,
        passed=passed,
        why=why,
        max_loss=max_loss,
        candidate_ms=result.chosen_cost.single_row_ms,
        champion_ms=champion_ms,
    )
    return "\n\n".join(["\n".join(head), gate, window_section(window), training_section(result)]) + "\n"


def skipped(*, model_name: str, trigger: str, reason: str) -> str:
    """The artifact of a retrain that trained nothing, and why."""
    return f"# Retrain: {model_name} skipped\n\nStarted by **{trigger}**. Nothing was trained: {reason}.\n"


def infeasible_plan(model_name: str, plan: ExperimentPlan) -> str:
    """Said at once when the A/B plan cannot reach its sample within the maximum duration at the observed traffic."""
    return (
        f"# Infeasible A/B plan: {model_name} v{plan.challenger_version}\n\n{plan.feasibility}\n\n"
        "The experiment starts all the same; unless traffic grows, it ends at its maximum duration without a "
        "verdict (ROLLBACK). Plan a larger MDE, a longer maximum duration or a larger split."
    )
