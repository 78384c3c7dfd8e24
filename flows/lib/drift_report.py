"""The drift check's summary for people: the markdown artifact in the Prefect UI and the replay command's text."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the flow imports this module before its first task: no pandas here
    from flows.lib.drift_check import CheckResult
    from flows.lib.drift_policy import Verdict


def columns_table(result: CheckResult, persistent: set[str] | None = None) -> str:
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


def outcomes_lines(result: CheckResult) -> list[str]:
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


def markdown(
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
        columns_table(result, persistent),
        "",
        "## Data quality",
        "",
        result.quality.markdown(),
        "",
    ]
    outcomes = outcomes_lines(result)
    if outcomes:
        parts += ["## Predictions, labels, accuracy", "", *outcomes, ""]
    if report_url:
        parts += [f"[Evidently report]({report_url})"]
    return "\n".join(parts)
