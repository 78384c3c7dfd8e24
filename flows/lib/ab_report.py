"""Reports of A/B looks: the JSON record, the plot of the metric per arm over time, and the MLflow run per look."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from scipy.stats import binomtest

from contracts.registry import AB_EXPERIMENT, CHALLENGER, CHAMPION

NAN = float("nan")
LATENCY_BREACHED = "latency_breached"
"""Look metric: 1 when that look's latency guardrail saw a breach (acted on or not), else 0."""


def wilson(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson interval of one arm's accuracy at one look (not time-uniform: for display)."""
    if n == 0:
        return (0.0, 1.0)
    ci = binomtest(correct, n).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def write_report(report: dict[str, Any], folder: Path, stamp: str) -> tuple[Path, Path]:
    """Write one look's report and replace the experiment's stable `latest.json` (written whole, then renamed)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stamp}.json"
    text = json.dumps(report, indent=2, default=str)
    path.write_text(text)
    latest = folder / "latest.json"
    tmp = folder / ".latest.json.tmp"
    tmp.write_text(text)
    tmp.replace(latest)
    return path, latest


def plot_history(points: list[dict[str, Any]], path: Path, *, title: str) -> Path:
    """Accuracy per arm over the looks with per-look Wilson intervals, and the lift with its always-valid bounds.

    The time axis is minutes since the first look (hours once the experiment runs past two), so a first look is
    one readable point, not a date axis spanning years; intervals are drawn as error bars, visible from one look on.

    Args:
        points: One dict per look with `at` (datetime), `{arm}_accuracy`, `{arm}_low`, `{arm}_high` for
            champion and challenger, and `d_hat`, `cs_lower`, `cs_upper` (NaN before the test can run).
        path: Where the PNG goes.
        title: Title of the figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(points, key=lambda p: _moment(p["at"]))
    start = _moment(points[0]["at"])
    minutes = [(_moment(p["at"]) - start).total_seconds() / 60 for p in points]
    hours = minutes[-1] > 120
    x = [m / 60 for m in minutes] if hours else minutes
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for offset, (arm, color) in zip((-0.15, 0.15), ((CHAMPION, "tab:blue"), (CHALLENGER, "tab:orange")), strict=True):
        acc = [p[f"{arm}_accuracy"] for p in points]
        # A band that misses its point by a rounding is drawn flat on that side: the picture must never fail a look.
        low = [max(a - p[f"{arm}_low"], 0.0) for a, p in zip(acc, points, strict=True)]
        high = [max(p[f"{arm}_high"] - a, 0.0) for a, p in zip(acc, points, strict=True)]
        shift = offset * (max(x) - min(x) or 1) / max(len(x), 1) / 4  # keep the two arms' bars apart
        top.errorbar([v + shift for v in x], acc, yerr=[low, high], marker="o", capsize=4, color=color, label=arm)
    top.set_ylabel("accuracy (95% Wilson per look)")
    top.legend(loc="best")
    top.set_title(title)
    tested = [(v, p) for v, p in zip(x, points, strict=True) if p["cs_lower"] == p["cs_lower"]]  # NaN-free
    if tested:
        xs = [v for v, _ in tested]
        d = [p["d_hat"] for _, p in tested]
        below = [max(p["d_hat"] - max(p["cs_lower"], -1.0), 0.0) for _, p in tested]
        above = [max(min(p["cs_upper"], 1.0) - p["d_hat"], 0.0) for _, p in tested]
        bottom.errorbar(xs, d, yerr=[below, above], marker="o", capsize=4, color="black",
                        label="lift, always-valid confidence sequence")  # fmt: skip
    else:
        bottom.text(0.5, 0.5, "too few labelled outcomes to test yet", ha="center", transform=bottom.transAxes)
    bottom.axhline(0, color="red", linewidth=1)
    bottom.set_ylabel("accuracy lift (challenger - champion)")
    bottom.set_xlabel("hours since the first look" if hours else "minutes since the first look")
    if tested:
        bottom.legend(loc="best")
    if len(x) == 1:
        bottom.set_xlim(x[0] - 1, x[0] + 1)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _moment(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def primary_numbers(evidence: dict[str, Any]) -> dict[str, float]:
    """The primary test's numbers; NaN before both arms have enough labelled outcomes to test."""
    return evidence["primary"] or {k: NAN for k in ("d_hat", "cs_lower", "cs_upper", "always_valid_p")}


def nan_if_none(value: float | None) -> float:
    """A p-value for a metric: NaN where there was nothing to test (0.0 stays 0.0)."""
    return NAN if value is None else value


def look_point(at: datetime, evidence: dict[str, Any]) -> dict[str, Any]:
    """One look as a point of the history plot: accuracy per arm with its Wilson band, and the lift with its CS."""
    arms = evidence["arms"]
    point = {"at": at, **{k: primary_numbers(evidence)[k] for k in ("d_hat", "cs_lower", "cs_upper")}}
    for arm in (CHAMPION, CHALLENGER):
        # The primary metric: correct over scored (labelled answered + failed) requests, from the users' sums; the
        # band is drawn around that same count (the arm's `correct` is read separately and can differ by a label).
        accuracy, scored = arms[arm]["scored_accuracy"] or 0.0, arms[arm]["scored"]
        low, high = wilson(round(accuracy * scored), scored)
        point |= {f"{arm}_accuracy": accuracy, f"{arm}_low": low, f"{arm}_high": high}
    return point


def _looks(client: mlflow.MlflowClient, ab_id: str, model_name: str, experiment_id: str) -> list[Any]:
    """The recorded looks of one experiment, newest first."""
    return client.search_runs(
        [ab_id],
        filter_string=f"tags.experiment_id = '{experiment_id}' and tags.model_name = '{model_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1000,
    )


def latency_breach_streak(model_name: str, experiment_id: str) -> int:
    """How many of this experiment's latest looks in a row saw a latency breach (0 without looks)."""
    client = mlflow.MlflowClient()
    ab = client.get_experiment_by_name(AB_EXPERIMENT)
    if ab is None:
        return 0
    streak = 0
    for run in _looks(client, ab.experiment_id, model_name, experiment_id):
        if run.data.metrics.get(LATENCY_BREACHED) != 1.0:
            break
        streak += 1
    return streak


def log_look(
    decision: dict[str, Any],
    *,
    experiment_id: str,
    decision_id: str,
    loop_id: str,
    model_name: str,
    reports_dir: Path,
) -> dict[str, str]:
    """Write one look's JSON report, plot this experiment's history and log the look as an MLflow run.

    Args:
        decision: `Decision.to_dict()` of this look.
        experiment_id: The router's experiment (`v{champion}-vs-v{challenger}`).
        decision_id: Identifies this look's decision.
        loop_id: The turn of the loop the challenger came from.
        model_name: Registered model name.
        reports_dir: Folder under which `ab/<experiment_id>/` holds the reports and plots.

    Returns:
        Paths of the report, `latest.json` and the plot, and the MLflow run's id and experiment id.
    """
    now = datetime.now(UTC)
    stamp = now.strftime("%Y%m%dT%H%M%S")
    report = {
        "decision_id": decision_id,
        "loop_id": loop_id,
        "model_name": model_name,
        "experiment_id": experiment_id,
        "at": now.isoformat(),
        **decision,
    }
    folder = reports_dir / "ab" / experiment_id
    path, latest = write_report(report, folder, stamp)

    client = mlflow.MlflowClient()
    ab = client.get_experiment_by_name(AB_EXPERIMENT)
    ab_id = ab.experiment_id if ab else client.create_experiment(AB_EXPERIMENT)
    earlier = _looks(client, ab_id, model_name, experiment_id)
    evidence = decision["evidence"]
    points = [
        dict(run.data.metrics) | {"at": datetime.fromtimestamp(run.info.start_time / 1000, UTC)}
        for run in earlier
        if "cs_lower" in run.data.metrics and "champion_low" in run.data.metrics
    ]
    points.append(look_point(now, evidence))
    plot = plot_history(points, folder / f"{stamp}.png", title=f"{model_name} {experiment_id}: look {len(points)}")
    metrics = {k: float(v) for k, v in points[-1].items() if k != "at" and v is not None}
    metrics |= {
        "always_valid_p": primary_numbers(evidence)["always_valid_p"],
        "plain_chi2_p": nan_if_none(evidence["plain_chi2"]["p_value"]),
        "srm_p_all": nan_if_none(evidence["srm"]["all_traffic"]["p_value"]),
        "srm_p_labelled": nan_if_none(evidence["srm"]["labelled"]["p_value"]),
        LATENCY_BREACHED: float(any(g["values"].get("breached_now") for g in evidence["guardrails"])),
        **{f"{arm}_labelled": values["labelled"] for arm, values in evidence["arms"].items()},
    }
    with mlflow.start_run(
        experiment_id=ab_id,
        run_name=f"{experiment_id} look {len(points)}: {decision['decision']}",
        tags={
            "experiment_id": experiment_id,
            "decision": decision["decision"],
            "decision_id": decision_id,
            "loop_id": loop_id,
            "model_name": model_name,
            "reason": decision["reason"][:5000],
        },
    ) as run:
        mlflow.log_metrics({k: v for k, v in metrics.items() if v == v})  # NaN-free
        mlflow.log_artifact(str(path), artifact_path="report")
        mlflow.log_artifact(str(plot), artifact_path="plot")
    return {
        "report": str(path.resolve()),
        "latest": str(latest.resolve()),
        "plot": str(plot.resolve()),
        "run_id": run.info.run_id,
        "mlflow_experiment_id": ab_id,
    }
