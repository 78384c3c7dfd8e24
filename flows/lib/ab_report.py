"""Reports of A/B looks: the JSON record, a markdown summary, and the plot of the metric per arm over time."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from scipy.stats import binomtest


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
