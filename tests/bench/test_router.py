"""The router bench's harness in its tiny configuration: models registered, servers started, loaded, measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import router

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_the_tiny_router_bench_measures_the_floor_and_the_router(tmp_path):
    # A process of its own, as `make bench` runs it: the bench sets MLflow's process-wide tracking and registry URIs.
    out = tmp_path / "router.json"
    subprocess.run([sys.executable, "-m", "bench.router", "--tiny", "--out", str(out)], cwd=ROOT, check=True)
    run = json.loads(out.read_text())
    servers = [p["server"] for p in run["points"]]
    assert servers == [
        "bare Litestar endpoint",
        "this router (GaussianNB)",
        "this router (GaussianNB, synchronous=NORMAL)",
    ]
    assert all(p["requests"] > 0 and p["requests_per_s"] > 0 and p["p99_ms"] >= p["p50_ms"] for p in run["points"])
    assert all(p["errors"] == 0 for p in run["points"])
    assert len(run["ratios"]) == 2
    assert all(0 < ratio["share_of_bare_rps"] for ratio in run["ratios"].values())
    assert len(run["load_before"]) == 3


def test_ratios_compare_each_router_point_with_the_floor_and_flask():
    point = router.Point
    points = [
        point("bare Litestar endpoint", 16, 1000, 10, 20, 1, 0, 0),
        point("Flask + gunicorn, mlflow.pyfunc + CSV (GaussianNB)", 16, 50, 100, 200, 1, 0, 0),
        point("this router (GaussianNB)", 16, 600, 12, 24, 1, 0, 0),
    ]
    [entry] = router.ratios(points).values()
    assert entry["share_of_bare_rps"] == 0.6 and entry["x_flask_rps"] == 12 and entry["p99_over_bare_p99"] == 1.2
    assert entry["targets"] == {"rps >= 50% of bare": True, "rps >= 10x Flask": True, "p99 < 25 ms": True}
