"""Every flow module imports, prefect.yaml points at real flows, and every automation file validates."""

import importlib
import typing
import uuid
from pathlib import Path

import pytest
import yaml
from prefect import Flow

from automations.apply import build, definitions, referenced_deployments
from contracts import events
from contracts.registry import RETRAIN_TRIGGERS, TRIGGER_DRIFT, TRIGGER_SCHEDULE, RetrainTrigger

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENTS = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_every_deployment_entrypoint_is_a_prefect_flow(deployment):
    path, name = deployment["entrypoint"].split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    assert isinstance(getattr(module, name), Flow)
    assert deployment["work_pool"]["name"] == "driftloop"


def test_scheduled_deployments_default_to_hourly():
    schedules = {d["name"]: d.get("schedules") for d in DEPLOYMENTS}
    assert schedules["drift"] == [{"interval": 3600, "slug": "hourly"}]
    assert schedules["ab-evaluation"] == [{"interval": 3600, "slug": "hourly"}]


@pytest.mark.parametrize("path,definition", definitions(), ids=lambda x: getattr(x, "name", ""))
def test_every_automation_validates_and_watches_a_known_event(path, definition):
    known = {v for k, v in vars(events).items() if k.isupper() and isinstance(v, str) and v.startswith("driftloop.")}
    known |= {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    flows = {}
    for d in DEPLOYMENTS:
        module = importlib.import_module(d["entrypoint"].split(":")[0].removesuffix(".py").replace("/", "."))
        flows[d["name"]] = getattr(module, d["entrypoint"].split(":")[1]).name
    deployments = {f"{flows[name]}/{name}" for name in flows}
    targets = referenced_deployments([(path, definition)])
    assert targets <= deployments, f"{path.name} runs a deployment prefect.yaml does not define"
    automation = build(definition, {name: uuid.uuid4() for name in targets})
    assert set(automation.trigger.expect) <= known
    assert automation.trigger.match  # every trigger names what it matches
    assert automation.actions, f"{path.name} does nothing"


def test_retrain_automation_passes_every_payload_key_it_templates():
    retrain = next(d for p, d in definitions() if p.name == "retrain_on_drift.yaml")
    parameters = retrain["actions"][0]["parameters"]
    templated = {v.split("event.payload.")[1].strip(" }") for v in parameters.values() if "event.payload." in v}
    assert templated == {"model_name", "drift_share", "drifted_columns", "report_url", "loop_id", "champion_version"}
    assert templated <= set(events.DriftPayload.model_fields)
    assert parameters["trigger"] == TRIGGER_DRIFT


def test_the_scheduled_retrain_runs_the_same_flow_weekly_as_trigger_schedule():
    by_name = {d["name"]: d for d in DEPLOYMENTS}
    scheduled, on_drift = by_name["retrain-scheduled"], by_name["retrain"]
    assert scheduled["entrypoint"] == on_drift["entrypoint"] == "flows/retrain.py:retrain"
    assert scheduled["schedules"] == [{"cron": "0 3 * * 1", "timezone": "UTC", "slug": "weekly"}]
    assert scheduled["parameters"] == {"trigger": TRIGGER_SCHEDULE}
    assert "schedules" not in on_drift  # the drift-triggered one runs on events only
    assert scheduled["concurrency_limit"] == on_drift["concurrency_limit"]


def test_the_retrain_trigger_parameter_accepts_exactly_the_contract_triggers():
    from flows.retrain import retrain

    schema = retrain.parameters.model_dump_for_openapi()
    definition = schema["properties"]["trigger"]
    choices = next(option["enum"] for option in definition["anyOf"] if "enum" in option)
    assert set(choices) == set(RETRAIN_TRIGGERS) == set(typing.get_args(RetrainTrigger))


HEAVY = ("mlflow", "pandas", "numpy", "scipy", "sklearn", "pycaret", "evidently", "matplotlib")


def test_flow_modules_import_nothing_heavy():
    """Every flow run is a new process: loading a flow must cost Prefect's imports, not MLflow's or pandas'."""
    import subprocess
    import sys

    modules = [d["entrypoint"].split(":")[0].removesuffix(".py").replace("/", ".") for d in DEPLOYMENTS]
    modules += ["flows.lib.drift_policy", "flows.lib.artifacts"]  # imported by the drift flow before its first line
    code = (
        f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        f"print(','.join(sorted(h for h in {HEAVY!r} if h in sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"flow modules import {result.stdout.strip()} at module level"
