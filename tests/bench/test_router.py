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
    # What each server's processes spent per request, and their main threads (the event loop) within it.
    assert all(0 < p["main_us_per_request"] <= p["cpu_us_per_request"] for p in run["points"])
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


def test_cpu_ticks_counts_a_process_group_and_its_main_threads():
    import os

    if not os.path.isdir("/proc/self/task"):
        pytest.skip("no /proc")
    busy = subprocess.Popen(
        [sys.executable, "-c", "import threading, time\n"
         "def spin():\n    end = time.process_time() + 0.6\n    while time.process_time() < end: pass\n"
         "t = threading.Thread(target=spin); t.start(); t.join(); print('spun', flush=True); time.sleep(30)"],
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        # Read once the thread has spun and ended (a fixed 1.5 s sleep was too short on a busy machine).
        assert busy.stdout is not None and busy.stdout.readline().strip() == "spun"
        total, main = router.cpu_ticks(busy.pid)
    finally:
        busy.kill()
        busy.wait()
    ticks = os.sysconf("SC_CLK_TCK")
    assert total >= 0.4 * ticks  # the spinning thread's time counts
    assert main < total  # and it is not the main thread's
    assert router.cpu_ticks(busy.pid) == (0, 0)  # the group is gone


def test_the_tiny_ceiling_bench_measures_the_router_hollowed_out(tmp_path):
    out = tmp_path / "router_ceiling.json"
    subprocess.run(
        [sys.executable, "-m", "bench.router", "--ceiling", "--tiny", "--out", str(out)], cwd=ROOT, check=True
    )
    run = json.loads(out.read_text())
    assert [p["server"] for p in run["points"]] == [
        "bare Litestar endpoint",
        "this router (GaussianNB)",
        "ceiling: this router without a model (constant answer)",
        "ceiling: this router without a model or a log write",
    ]
    assert all(p["requests"] > 0 and p["errors"] == 0 for p in run["points"])
    assert len(run["ratios"]) == 3


def test_a_hollow_router_answers_without_its_model_or_its_log(monkeypatch):
    from bench import router_servers
    from serving.services.predict import PredictService
    from serving.services.store.inferences import InferenceLog

    # Registered with monkeypatch so that the originals come back after the test.
    monkeypatch.setattr(PredictService, "_predict_arm", PredictService._predict_arm)
    monkeypatch.setattr(InferenceLog, "record_many", InferenceLog.record_many)
    router_servers.hollow_router("no-model-no-log")
    entries = [object(), object()]
    assert PredictService._predict_arm(None, entries, [], "v1", []) == [(e, "ceiling", 0.0) for e in entries]
    assert InferenceLog.record_many(None, ["row"]) == ["row"]
    with pytest.raises(SystemExit, match="unknown ceiling"):
        router_servers.hollow_router("no-router")
