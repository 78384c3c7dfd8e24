"""The flow-startup bench's README table marks each deployment's CPU before its first task against the target."""

from bench.flow_startup import table


def test_the_table_marks_each_deployment_against_the_target():
    results = {
        "command": "uv run python -m bench.flow_startup",
        "python": "3.11.7",
        "cpus": 2,
        "bytecode_compiled": True,
        "load_average_at_start": 0.4,
        "target_cpu_seconds": 3.0,
        "rows": [
            {"deployment": "drift", "cpu_seconds_median": 2.41, "cpu_seconds_max": 2.6},
            {"deployment": "retrain", "cpu_seconds_median": 3.2, "cpu_seconds_max": 3.4},
        ],
    }
    lines = table(results).splitlines()
    assert "bytecode compiled" in lines[0]
    assert "| drift | 2.41 | 2.60 | yes |" in lines
    assert "| retrain | 3.20 | 3.40 | **no** |" in lines
