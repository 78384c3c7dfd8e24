"""Reports of A/B looks: the JSON record, the plot of the metric per arm over time, and the MLflow run per look."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from scipy.stats import binomtest

from contracts.registry import AB_EXPERIMENT

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
    """Accuracy per arm over the looks with per-look Wilson bands, and the lift with its always-valid bounds.

    Args:
        points: One dict per look with `at` (datetime), `{arm}_accuracy`, `{arm}_low`, `{arm}_high` for
            champion and challenger, and `d_hat`, `cs_lower`, `cs_upper`.
        path: Where the PNG goes.
        title: Title of the figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(points, key=lambda p: p["at"])
    at = [p["at"] if isinstance(p["at"], datetime) else datetime.fromisoformat(str(p["at"])) for p in points]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for arm, color in (("champion", "tab:blue"), ("challenger", "tab:orange")):
        top.plot(at, [p[f"{arm}_accuracy"] for p in points], marker="o", color=color, label=arm)
        top.fill_between(
            at, [p[f"{arm}_low"] for p in points], [p[f"{arm}_high"] for p in points], color=color, alpha=0.2
        )
    top.set_ylabel("accuracy (95% Wilson per look)")
    top.legend(loc="best")
    top.set_title(title)
    bottom.plot(at, [p["d_hat"] for p in points], marker="o", color="black", label="challenger - champion")
    lower = [max(p["cs_lower"], -1.0) for p in points]
    upper = [min(p["cs_upper"], 1.0) for p in points]
    bottom.fill_between(at, lower, upper, color="gray", alpha=0.3, label="always-valid confidence sequence")
    bottom.axhline(0, color="red", linewidth=1)
    bottom.set_ylabel("accuracy lift")
    bottom.legend(loc="best")
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
    for arm in ("champion", "challenger"):
        low, high = wilson(arms[arm]["correct"], arms[arm]["labelled"])
        point |= {f"{arm}_accuracy": arms[arm]["accuracy"] or 0.0, f"{arm}_low": low, f"{arm}_high": high}
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
