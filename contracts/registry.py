"""The MLflow registry contract: aliases, tags and artifact paths that flows write and the router reads."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Literal

import msgspec

from contracts.api import ExperimentPlan
from contracts.decision import WatchPromise

CHAMPION = "champion"
"""Alias of the version that serves by default."""
CHALLENGER = "challenger"
"""Alias of the version under A/B test, when there is one."""

REFERENCE_ARTIFACT_DIR = "reference"
"""Run artifact folder holding the data a version takes as its reference for drift."""
REFERENCE_FILE = "reference.parquet"
MODEL_ARTIFACT = "model"
"""Name under which the model is logged in its run (MLflow 3 stores it as a logged model `models:/m-<id>`)."""

TAG_TARGET = "driftloop.target"
"""Version tag: name of the target column."""
TAG_GATE = "driftloop.quality_gate"
"""Version tag: `GATE_PASSED` or `GATE_FAILED`, with metrics in the run."""
TAG_DECISION = "driftloop.decision"
"""Version tag: the last A/B decision about this version."""
TAG_PREVIOUS_CHAMPION = "driftloop.previous_champion"
"""Version tag on a promoted version: the champion it replaced (for rollback)."""
TAG_REPLACED_BY = "driftloop.replaced_by"
"""Version tag on a former champion: the version that replaced it (it stays registered for rollback)."""
TAG_DECISION_ID = "driftloop.decision_id"
TAG_LOOP_ID = "driftloop.loop_id"
"""Version tag: the turn of the loop (drift event -> retrain -> experiment -> decision) the version belongs to."""
TAG_WATCH_PREFIX = "driftloop.watch."
"""Version tags of a promoted champion: the promise its post-promotion watch holds it to, one tag per field."""
TAG_WATCH_STATUS = "driftloop.watch_status"
"""`watching`, `held` (the period passed) or `regressed` (rolled back by the watch)."""
TAG_PLAN_PREFIX = "driftloop.plan."
"""Version tags of a challenger: its experiment plan, one tag per field."""

AB_EXPERIMENT = "driftloop-ab"
"""MLflow experiment with one run per A/B look (tags `experiment_id`, `model_name`, `decision`)."""
TAG_TRIGGER_EVENT = "driftloop.trigger_event_id"
"""Run tag of a retrain: the id of the Prefect event that started it (empty when a person or a schedule did)."""
TAG_FLOW_RUN_ID = "driftloop.prefect_flow_run_id"
"""Run tag: the Prefect flow run that made this MLflow run."""
TAG_FLOW_RUN_URL = "driftloop.prefect_flow_run_url"
"""Run tag: that flow run in the Prefect UI."""
TAG_DATA_ROWS = "driftloop.training_rows"
"""Run tag of a training run: how many rows it trained on."""
TAG_DATA_HASH = "driftloop.training_sha256"
"""Run tag of a training run: sha256 of the rows it trained on (features, target and row ids, in order)."""
TAG_WINDOW = "driftloop.traffic_window"
"""Run tag of a retrain: the time bounds of the labelled traffic it drew from (`first/last`, ISO, UTC)."""
REQUESTED_BY_LOOP = "driftloop"
"""Who asked for an alias move that the loop made by itself (a person's moves name that person)."""
ALIAS_HISTORY_EXPERIMENT = "driftloop-alias-history"
"""MLflow experiment with one run per alias move: the append-only history of the registry."""
REGISTRY_LOCK_PREFIX = "driftloop-registry:"
"""Prefect global concurrency limits (limit 1) named this plus the model name: whoever moves an alias of that model
(bootstrap, retrain, A/B evaluation, a manual control) holds it, on any worker of any machine."""


def registry_lock_name(model_name: str) -> str:
    """The Prefect global concurrency limit that every alias move of `model_name` holds."""
    return f"{REGISTRY_LOCK_PREFIX}{model_name}"


def model_uri(model_name: str, alias: str) -> str:
    """The MLflow URI that resolves a registered model by alias."""
    return f"models:/{model_name}@{alias}"


TAG_CLASSES = "driftloop.classes"
"""Version tag: the classes the model predicts, as a JSON list of strings (labels outside it are refused)."""


def plan_tags(plan: ExperimentPlan) -> dict[str, str]:
    """The version tags that keep an experiment plan on its challenger (one tag per field)."""
    return {f"{TAG_PLAN_PREFIX}{name}": str(value) for name, value in msgspec.structs.asdict(plan).items()}


def plan_from_tags(tags: Mapping[str, str]) -> ExperimentPlan | None:
    """The plan kept in a version's tags, or None when it has no plan tags.

    Raises:
        msgspec.ValidationError: The tags do not make a valid plan.
    """
    fields = {k.removeprefix(TAG_PLAN_PREFIX): v for k, v in tags.items() if k.startswith(TAG_PLAN_PREFIX)}
    return msgspec.convert(fields, ExperimentPlan, strict=False) if fields else None


def classes_tag(classes: Iterable[object]) -> str:
    """The value of `TAG_CLASSES` for these classes (compared as strings, like labels)."""
    return json.dumps(sorted({str(c) for c in classes}))


def classes_from_tags(tags: Mapping[str, str]) -> frozenset[str] | None:
    """The classes kept in a version's tags, or None when it has none (or an unreadable one)."""
    raw = tags.get(TAG_CLASSES)
    if not raw:
        return None
    try:
        values = json.loads(raw)
    except ValueError:
        return None
    return frozenset(str(v) for v in values) if isinstance(values, list) and values else None


TAG_KIND = "driftloop.kind"
"""Run tag: what kind of loop run this is (`KIND_DRIFT`; a run without it is a training run)."""
KIND_DRIFT = "drift"
"""`TAG_KIND` of a drift check's MLflow run."""
TAG_DRIFTED_COLUMNS = "driftloop.drifted_columns"
"""Run tag of a retrain started by drift: the columns the drift check flagged, comma-separated."""
TAG_DRIFT_REPORT = "driftloop.drift_report"
"""Run tag of a retrain started by drift: the address of the drift report that started it."""
TAG_PARENT_CHAMPION = "driftloop.parent_champion"
"""Run tag of a retrain: the champion version it set out to replace."""
TAG_GATE_REASON = f"{TAG_GATE}.reason"
"""Version tag: why the quality gate passed or failed, with the figures it rests on."""
GATE_PASSED = "passed"
"""`TAG_GATE` of a version that passed the quality gate."""
GATE_FAILED = "failed"
"""`TAG_GATE` of a version that failed it."""
GATE_BOOTSTRAP = "bootstrap"
"""`TAG_GATE` of the first version: it became champion without a gate (there was nothing to compare it with)."""

_MISSING_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"})


def registry_missing(exc: Exception) -> bool:
    """Whether an MLflow error says the model, version or run does not exist (not that the registry is broken)."""
    return getattr(exc, "error_code", "") in _MISSING_CODES


def alias_missing(exc: Exception) -> bool:
    """Whether an MLflow error says an alias does not exist: the SQL registry reports that as
    INVALID_PARAMETER_VALUE ("... alias x not found."), the same code as a malformed alias."""
    return getattr(exc, "error_code", "") == "INVALID_PARAMETER_VALUE" and "not found" in str(exc).lower()


TAG_TRIGGER = "driftloop.trigger"
"""Run and version tag: what started the training (`bootstrap`, or one of `RETRAIN_TRIGGERS`)."""
TRIGGER_BOOTSTRAP = "bootstrap"
"""The first training (the `bootstrap` flow), before there is a champion."""
TRIGGER_DRIFT = "drift"
"""A retrain started by the drift automation (`automations/retrain_on_drift.yaml`)."""
TRIGGER_SCHEDULE = "schedule"
"""A retrain started by the schedule of the `retrain-scheduled` deployment (`prefect.yaml`)."""
TRIGGER_MANUAL = "manual"
"""A retrain started by hand (a deployment run from the UI or CLI, or a direct call)."""
RetrainTrigger = Literal["drift", "schedule", "manual"]
"""What may start a retrain (the retrain flow's `trigger` parameter); the flow records which one did."""
RETRAIN_TRIGGERS: tuple[RetrainTrigger, ...] = (TRIGGER_DRIFT, TRIGGER_SCHEDULE, TRIGGER_MANUAL)

TRAINING_ARTIFACT_DIR = "training"
"""Run artifact folder holding the rows a version was trained on, so later retrains can draw history from them."""
TRAINING_FILE = "training.parquet"
"""Features and target of every training row, plus the row columns below."""
WINDOW_FILE = "window.json"
"""How the training rows were chosen: the policy, row counts per source, time bounds and content hashes."""
ROW_ID = "_row_id"
"""Row column: a stable id (`original:<index>` for a row of the original data, the request id for traffic)."""
ROW_SOURCE = "_source"
"""Row column: where the row came from: `original` (the data the first version was trained on) or `traffic`."""
ROW_TS = "_ts"
"""Row column: when the request was logged (UTC; empty for original rows)."""
ROW_COLUMNS = (ROW_ID, ROW_SOURCE, ROW_TS)
TAG_ORIGINAL_RUN = "driftloop.training.original_run"
"""Run and version tag of a retrained version: the run whose training rows are the original data (the bootstrap
run). A version without it (a bootstrap) holds the original data in its own run."""

GATE_ARTIFACT_DIR = "gate"
"""Run artifact folder of the quality gate's evidence: the holdout rows and the comparison on them."""
GATE_HOLDOUT_FILE = "holdout.parquet"
GATE_EVIDENCE_FILE = "evidence.json"

DRIFT_ARTIFACT_DIR = "drift"
"""Run artifact folder of a version's drift calibration (and of a drift check run's summary)."""
DRIFT_CALIBRATION_FILE = "calibration.json"
"""Per-column methods and calibrated thresholds of a version, and the budget they meet."""
TAG_DRIFT_CALIBRATION = "driftloop.drift_calibration"
"""Version tag: a one-line summary of the drift calibration stored in its run."""


def watch_tags(promise: WatchPromise) -> dict[str, str]:
    """The version tags that keep a promoted champion's promise (one tag per field)."""
    return {f"{TAG_WATCH_PREFIX}{name}": str(value) for name, value in msgspec.to_builtins(promise).items()} | {
        TAG_WATCH_STATUS: "watching"
    }


def watch_from_tags(tags: Mapping[str, str]) -> WatchPromise | None:
    """The promise kept in a version's tags, or None when it has none."""
    fields = {k.removeprefix(TAG_WATCH_PREFIX): v for k, v in tags.items() if k.startswith(TAG_WATCH_PREFIX)}
    return msgspec.convert(fields, WatchPromise, strict=False) if fields else None
