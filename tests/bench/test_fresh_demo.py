"""The fresh-clone demo bench reads its figures from the demo's own timeline and summary."""

from bench.fresh_demo import table, timings

STDOUT = """[    0.0s] started prefect (pid 1), log /x/prefect.log
[   41.2s] worker is polling
[   41.5s] bootstrap: running the bootstrap deployment (trains a first champion if there is none)
[  230.0s] PROMOTED v2 to champion (was v1)
"""


def test_the_loop_time_runs_from_the_services_up_to_the_promotion():
    summary = {
        "closed": True,
        "stages_s": {"bootstrap": 90.0, "promoted": 229.9},
        "decision": {"decision": "PROMOTE"},
        "promoted": {"champion_version": "1", "challenger_version": "2"},
        "rolled_back": None,
        "flow_run_states": {"Completed": 20, "Failed": 1},
        "flow_runs": [
            {"name": "drift: IrisClassifier", "deployment": "drift", "state": "Completed", "message": ""},
            {"name": "ab-evaluation: IrisClassifier", "deployment": "ab-evaluation", "state": "Failed", "message": "x"},
        ],
    }
    figures = timings(STDOUT, summary)
    assert figures["runs_not_completed"] == [
        {"name": "ab-evaluation: IrisClassifier", "deployment": "ab-evaluation", "state": "Failed", "message": "x"}
    ]
    assert figures["services_up_s"] == 41.5
    assert figures["loop_after_services_s"] == 188.4
    assert (figures["closed"], figures["decision"], figures["promoted"]) == (True, "PROMOTE", "v1 -> v2")
    assert figures["rolled_back"] is False


def test_a_demo_that_did_not_get_far_has_no_loop_time():
    figures = timings("[    0.0s] started prefect (pid 1)\n", None)
    assert figures["closed"] is False
    assert figures["services_up_s"] is None and figures["loop_after_services_s"] is None


def test_the_readme_table_shows_every_run_with_its_machine_and_what_it_decided():
    ok = {"at": "2026-11-27T21:00:00+00:00", "commit": "c37e140aaaa", "busy_core": True, "exit_code": 0}
    ok |= {"wall_seconds": 400.2}
    summary = {"closed": True, "stages_s": {"promoted": 229.9}, "decision": {"decision": "PROMOTE"}}
    summary |= {"promoted": {"champion_version": "1", "challenger_version": "2"}}
    ok |= timings(STDOUT, summary | {"flow_run_states": {"Completed": 20, "Cancelled": 2}})
    failed = ok | {"exit_code": 1, "busy_core": False} | timings("", None)
    rows = table([ok, failed]).splitlines()[2:]
    assert rows[0] == (
        "| 1 | 2026-11-27 21:00 | c37e140 | one core busy | 0 | 400 s | 42 s | 230 s | **188 s** | PROMOTE v1 -> v2 "
        "| 2 Cancelled, 20 Completed |"
    )
    assert rows[1].startswith("| 2 | 2026-11-27 21:00 | c37e140 | quiet | 1 | 400 s | - | - | **-** | - | - |")
