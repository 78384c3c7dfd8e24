"""One turn of the loop in one place: everything recorded under a `loop_id`, in order, with links into the UIs.

A turn starts with a drift alarm and carries its `loop_id` through the retrain run, the model version, the
experiment plan, every A/B look, the decision and the alias moves. This module gathers them from where they are kept
(MLflow runs, version tags and the alias history; Prefect events); `flows.lib.artifacts.loop_chain` renders the
chain as markdown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from mlflow import MlflowClient

from contracts.events import LOOP_PREFIX
from contracts.registry import (
    AB_EXPERIMENT,
    ALIAS_HISTORY_EXPERIMENT,
    TAG_GATE,
    TAG_GATE_REASON,
    TAG_KIND,
    TAG_LOOP_ID,
    TAG_PLAN_PREFIX,
)


@dataclass
class Step:
    """One recorded thing of the turn."""

    at: datetime
    kind: str
    """`event`, `run`, `version`, `look` or `move`."""
    title: str
    detail: str = ""
    links: dict[str, str] = field(default_factory=dict)


@dataclass
class Lineage:
    """The turn of the loop: its steps, oldest first."""

    model_name: str
    loop_id: str
    steps: list[Step]


def mlflow_ui(tracking_uri: str) -> str | None:
    """The MLflow UI base URL, when the tracking URI is a server."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith("http") else None


def _run_link(ui: str | None, experiment_id: str, run_id: str) -> dict[str, str]:
    return {"MLflow run": f"{ui}/#/experiments/{experiment_id}/runs/{run_id}"} if ui else {}


def _at(millis: int | None) -> datetime:
    return datetime.fromtimestamp((millis or 0) / 1000, UTC)


def from_mlflow(model_name: str, loop_id: str, tracking_uri: str) -> list[Step]:
    """Runs, versions, looks and alias moves that carry `loop_id`."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    ui = mlflow_ui(tracking_uri)
    steps: list[Step] = []
    experiments = client.search_experiments()
    by_name = {e.name: e.experiment_id for e in experiments}
    training = [e.experiment_id for e in experiments if e.name not in (AB_EXPERIMENT, ALIAS_HISTORY_EXPERIMENT)]
    if training:
        for run in client.search_runs(training, filter_string=f"tags.`{TAG_LOOP_ID}` = '{loop_id}'"):
            kind = run.data.tags.get(TAG_KIND, "retrain")
            steps.append(
                Step(
                    _at(run.info.start_time), "run", f"{kind} run {run.info.run_name}",
                    ", ".join(f"{k} {v:.3g}" for k, v in sorted(run.data.metrics.items())[:6]),
                    _run_link(ui, run.info.experiment_id, run.info.run_id),
                )
            )  # fmt: skip
    for version in client.search_model_versions(f"name = '{model_name}'"):
        if version.tags.get(TAG_LOOP_ID) != loop_id:
            continue
        plan = {k.removeprefix(TAG_PLAN_PREFIX): v for k, v in version.tags.items() if k.startswith(TAG_PLAN_PREFIX)}
        detail = f"gate {version.tags.get(TAG_GATE, '?')}: {version.tags.get(TAG_GATE_REASON, '')}"
        if plan:
            detail += (
                f"; plan: alpha {plan.get('alpha')}, MDE {plan.get('mde')}, baseline {plan.get('baseline')}, "
                f"{plan.get('min_samples_per_arm')} labelled outcomes per arm, "
                f"at most {plan.get('max_duration_hours')} h"
            )
        links = {"MLflow version": f"{ui}/#/models/{model_name}/versions/{version.version}"} if ui else {}
        steps.append(
            Step(_at(version.creation_timestamp), "version", f"{model_name} v{version.version}", detail, links)
        )
    if AB_EXPERIMENT in by_name:
        looks = client.search_runs(
            [by_name[AB_EXPERIMENT]],
            filter_string=f"tags.loop_id = '{loop_id}' and tags.model_name = '{model_name}'",
            order_by=["attributes.start_time ASC"],
        )
        for run in looks:
            steps.append(
                Step(
                    _at(run.info.start_time), "look", f"A/B look: {run.data.tags.get('decision')}",
                    run.data.tags.get("reason", ""), _run_link(ui, run.info.experiment_id, run.info.run_id),
                )
            )  # fmt: skip
    if ALIAS_HISTORY_EXPERIMENT in by_name:
        moves = client.search_runs(
            [by_name[ALIAS_HISTORY_EXPERIMENT]],
            filter_string=f"tags.loop_id = '{loop_id}' and tags.model_name = '{model_name}'",
            order_by=["attributes.start_time ASC"],
        )
        for run in moves:
            tags = run.data.tags
            title = f"{tags.get('alias')}: {tags.get('from_version') or '-'} -> {tags.get('to_version') or '-'}"
            steps.append(
                Step(
                    _at(run.info.start_time), "move", title,
                    f"{tags.get('reason', '')} (asked by {tags.get('requested_by', '?')})",
                    _run_link(ui, run.info.experiment_id, run.info.run_id),
                )
            )  # fmt: skip
    return steps


async def from_prefect(loop_id: str) -> list[Step]:
    """The loop's Prefect events (every one carries the loop as a related resource), with their flow runs."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventOccurredFilter, EventRelatedFilter
    from prefect.utilities.urls import url_for

    steps = []
    async with get_client() as client:
        page = await client.read_events(
            filter=EventFilter(
                occurred=EventOccurredFilter(since=datetime(2000, 1, 1, tzinfo=UTC), until=datetime.now(UTC)),
                related=EventRelatedFilter(id=[f"{LOOP_PREFIX}{loop_id}"]),
            ),
            limit=50,
        )
        for event in sorted(page.events, key=lambda e: e.occurred):
            links = {}
            flow_run = next((r.id for r in event.related if r.id.startswith("prefect.flow-run.")), None)
            if flow_run:
                run_url = url_for("flow-run", obj_id=flow_run.removeprefix("prefect.flow-run."))
                links |= {"Prefect flow run": run_url} if run_url else {}
            event_url = url_for(event)
            links |= {"Prefect event": event_url} if event_url else {}
            reason = event.payload.get("reason") or ", ".join(event.payload.get("drifted_columns", []))
            steps.append(Step(event.occurred, "event", event.event, str(reason)[:300], links))
    return steps


def gather(model_name: str, loop_id: str, tracking_uri: str, *, with_prefect: bool = True) -> Lineage:
    """The whole turn, from MLflow and (when reachable) Prefect, oldest first."""
    steps = from_mlflow(model_name, loop_id, tracking_uri)
    if with_prefect:
        from prefect.utilities.asyncutils import run_coro_as_sync

        steps += run_coro_as_sync(from_prefect(loop_id))
    return Lineage(model_name, loop_id, sorted(steps, key=lambda s: s.at))


def latest_loop(model_name: str, tracking_uri: str) -> str | None:
    """The loop id of the newest version that has one."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    versions = sorted(
        client.search_model_versions(f"name = '{model_name}'"), key=lambda v: int(v.version), reverse=True
    )
    return next((v.tags[TAG_LOOP_ID] for v in versions if v.tags.get(TAG_LOOP_ID)), None)
