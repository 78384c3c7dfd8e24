"""The markdown of every Prefect artifact the flows publish (and of the commands that print the same): the drift
check, the retrain, the A/B look, the post-promotion watch, the turn of the loop.

Plain string building on the records the flows produce; everything it reads is imported for type hints only (no
pandas, no MLflow, no PyCaret), so a flow can import it before its first line at no cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from contracts.registry import CHALLENGER

if TYPE_CHECKING:
    from contracts.api import ExperimentPlan
    from contracts.decision import Decision, WatchResult
    from flows.lib.comparison import HoldoutComparison
    from flows.lib.data_quality import QualityReport
    from flows.lib.drift_check import CheckResult
    from flows.lib.drift_policy import Verdict
    from flows.lib.lineage import Lineage
    from flows.lib.training import TrainResult
    from flows.lib.window import SourceRecord, WindowRecord


# Drift


def drift_columns_table(result: CheckResult, persistent: set[str] | None = None) -> str:
    """Per-column tests: method, score, calibrated threshold, this check's verdict and (when known) the episode's."""
    from flows.lib.drift_stats import higher_is_drift

    header = "| column | method | score | calibrated threshold | this check |"
    rule = "|---|---|---|---|---|"
    if persistent is not None:
        header += " persistent |"
        rule += "---|"
    lines = [header, rule]
    tested = {c.column: c for c in result.drift.columns} if result.drift else {}
    flagged = result.quality.flagged()
    for calibrated in result.calibration.columns:
        column = calibrated.column
        test = tested.get(column)
        direction = ">" if higher_is_drift(calibrated.method) else "<"
        if test is None:
            score, verdict = "not tested", ", ".join(flagged.get(column, [])) or "not tested"
        else:
            score = f"{test.score:.4g}"
            verdict = "**drift**" if test.drifted else "ok"
            if column in flagged:
                verdict += f"; quality: {', '.join(flagged[column])}"
        line = f"| {column} | {calibrated.method} | {score} | {direction} {calibrated.threshold:.4g} | {verdict} |"
        if persistent is not None:
            line += " **yes** |" if column in persistent else " |"
        lines.append(line)
    return "\n".join(lines)


def drift_outcomes_lines(result: CheckResult) -> list[str]:
    """Prediction drift, label drift and accuracy, in words."""
    lines = []
    if result.prediction is not None:
        p = result.prediction
        lines.append(
            f"- prediction drift: {'**yes**' if p.shifted else 'no'} (chi-squared p {p.p_value:.3g} on {p.rows} "
            "served predictions against the version's predictions on its reference)"
        )
    if result.label is not None:
        p = result.label
        shifted = "**yes**" if p.shifted else "no"
        lines.append(f"- label drift: {shifted} (chi-squared p {p.p_value:.3g}, {p.rows} labels)")
    if result.accuracy is not None:
        a = result.accuracy
        holdout = "unknown" if a.holdout_accuracy is None else f"{a.holdout_accuracy:.3f}"
        lines.append(
            f"- accuracy on {a.labelled} labelled requests: {a.accuracy:.3f} [{a.low:.3f}, {a.high:.3f}] against "
            f"holdout {holdout}: {'**performance drop**' if a.dropped else 'no drop'}"
        )
    return lines


def drift_summary(
    *,
    title: str,
    result: CheckResult,
    verdict: Verdict | None,
    persistent: set[str] | None,
    consecutive: int,
    window_rows: int,
    report_url: str,
) -> str:
    """The whole summary: verdict and severity, the calibration, per-column tests, data quality, outcomes."""
    cal = result.calibration
    parts = [f"# {title}", ""]
    if not result.valid:
        parts += ["**Window invalid**: " + "; ".join(result.quality.schema_errors) + ". No drift verdict.", ""]
    elif verdict is not None:
        parts += [
            f"**Severity: {verdict.severity}** ({verdict.reason}). "
            + ("; ".join(verdict.reasons) if verdict.reasons else "No persistent finding.")
            + f" A finding counts after {consecutive} alarms in a row.",
            "",
        ]
    sample = (
        f"a seeded sample of {result.sample_rows} rows (seed {result.sample_seed})"
        if result.sample_rows < window_rows
        else f"all {window_rows} rows"
    )
    parts += [
        f"Window of {window_rows} requests, tested on {sample}.",
        "",
        "## Calibration",
        "",
        f"Thresholds calibrated for windows of {cal.window_rows} rows against {cal.reference_rows} reference rows: "
        f"at most {cal.budget:.0%} chance of a spurious episode per {cal.period_checks} checks with "
        f"{cal.consecutive} alarms in a row, so a no-drift check may alarm with probability "
        f"{cal.check_alarm_rate:.3g}; the thresholds keep below it with {cal.confidence:.0%} confidence "
        f"(resampled: {cal.resampled_alarm_rate:.3g} over {cal.resamples} resamples, seed {cal.seed}"
        f"{', reference split' if cal.fixed_reference else ', reference bootstrapped'}).",
        "",
        "## Per-column tests",
        "",
        drift_columns_table(result, persistent),
        "",
        "## Data quality",
        "",
        quality_table(result.quality),
        "",
    ]
    outcomes = drift_outcomes_lines(result)
    if outcomes:
        parts += ["## Predictions, labels, accuracy", "", *outcomes, ""]
    if report_url:
        parts += [f"[Evidently report]({report_url})"]
    return "\n".join(parts)


def quality_table(report: QualityReport) -> str:
    """The per-column data quality table of a drift check."""
    lines = [
        "| column | kind | missing (ref → window) | out of range | unseen categories | wrong type | findings |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in report.columns:
        unseen = f"{c.unseen:.1%}" + (f" ({', '.join(c.unseen_values[:5])})" if c.unseen_values else "")
        lines.append(
            f"| {c.column} | {c.kind} | {c.reference_missing:.1%} → {c.current_missing:.1%} | {c.out_of_range:.1%}"
            f" | {unseen} | {c.wrong_type:.1%} | {', '.join(c.issues) or 'ok'} |"
        )
    for column in report.absent_columns:
        lines.append(f"| {column} | | | | | | **absent** |")
    for column in report.extra_columns:
        lines.append(f"| {column} | extra | | | | | not in the reference (ignored) |")
    return "\n".join(lines)


# Retrain


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


def retrain_summary(
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


def retrain_skipped(*, model_name: str, trigger: str, reason: str) -> str:
    """The artifact of a retrain that trained nothing, and why."""
    return f"# Retrain: {model_name} skipped\n\nStarted by **{trigger}**. Nothing was trained: {reason}.\n"


def infeasible_plan(model_name: str, plan: ExperimentPlan) -> str:
    """Said at once when the A/B plan cannot reach its sample within the maximum duration at the observed traffic."""
    return (
        f"# Infeasible A/B plan: {model_name} v{plan.challenger_version}\n\n{plan.feasibility}\n\n"
        "The experiment starts all the same; unless traffic grows, it ends at its maximum duration without a "
        "verdict (ROLLBACK). Plan a larger MDE, a longer maximum duration or a larger split."
    )


# A/B looks and the watch


def ab_look(decision: Decision, *, model_name: str, experiment_id: str, decision_id: str, run_url: str) -> str:
    """The look's markdown summary: decision, what would change it, the numbers, guardrails and SRM."""
    ev, plan = decision.evidence, decision.evidence.plan
    p = ev.primary
    lift = (
        "too few scored outcomes to test yet"
        if p is None
        else f"lift {p.d_hat:+.4f}, {100 * (1 - plan.alpha):g}% always-valid CS [{p.cs_lower:+.4f}, {p.cs_upper:+.4f}],"
        f" always-valid p {p.always_valid_p:.3g} (cluster-robust over users; failed predictions count as misses)"
    )
    arms = "\n".join(
        f"| {name} | v{a.version} | {a.users or '-'} | {a.scored} | "
        f"{'-' if a.scored_accuracy is None else f'{a.scored_accuracy:.4f}'} | "
        f"{'-' if a.error_rate is None else f'{a.error_rate:.4f}'} | "
        f"{'-' if a.design_effect is None else f'{a.design_effect:.2f}'} |"
        for name, a in ev.arms.items()
    )
    guardrails = "\n".join(
        f"- {'**breached**' if not g.holds else 'shown' if g.shown else 'not shown yet'}: {g.name} {g.detail}"
        for g in ev.guardrails
    )
    srm = ev.srm
    return (
        f"# A/B look: {model_name} {experiment_id}\n\n**{decision.decision}** ({ev.rule}): {decision.reason}\n\n"
        f"**What would change it:** {decision.what_would_change}\n\n"
        f"| arm | version | users | scored | accuracy | error rate | design effect |\n|---|---|---|---|---|---|---|\n"
        f"{arms}\n\n- {lift}\n- plain chi-squared p {ev.plain_chi2.p_value:.3g} (not peeking-safe, for reference)\n"
        f"- SRM (always-valid, level {plan.srm_threshold} over both): users p {srm.all_traffic.p_value:.3g} (level "
        f"{srm.all_traffic.threshold:.2g}), labelled users p {srm.labelled.p_value:.3g} (level "
        f"{srm.labelled.threshold:.2g}){' (overridden by a resume)' if srm.overridden else ''}\n"
        f"- samples {ev.samples.labelled_per_arm} of {plan.min_samples_per_arm} planned per arm (design effect "
        f"{plan.design_effect:.2f}); elapsed {_hours(ev.elapsed_hours)} of {plan.max_duration_hours:g} h; plan "
        f"{'feasible' if plan.feasible else '**infeasible**'}: {plan.feasibility}\n\n**Guardrails**\n\n{guardrails}"
        f"\n\ndecision `{decision_id}`, loop `{plan.loop_id}`; [MLflow run with plot and report]({run_url})"
    )


def ab_watch(model_name: str, result: WatchResult) -> str:
    """The post-promotion watch's look at the new champion, for the Prefect UI."""
    return (
        f"# Post-promotion watch: {model_name} v{result.model_version}\n\n**{result.verdict}**: {result.reason}\n\n"
        f"{result.elapsed_hours:.2f} h of {result.period_hours:g} h watched."
    )


def _hours(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f} h"


# The loop


def loop_chain(lineage: Lineage) -> str:
    """A turn of the loop as a markdown list, each step with its links."""
    lines = [f"# Loop `{lineage.loop_id}` of {lineage.model_name}", ""]
    if not lineage.steps:
        lines.append("Nothing is recorded under this loop id.")
    for step in lineage.steps:
        links = " ".join(f"[{name}]({url})" for name, url in step.links.items())
        detail = f": {step.detail}" if step.detail else ""
        lines.append(f"- {step.at:%Y-%m-%d %H:%M:%S} **{step.title}**{detail} {links}".rstrip())
    return "\n".join(lines) + "\n"
