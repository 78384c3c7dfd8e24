"""Apply every automation in this folder to the Prefect server: read by name, then create or update.

Definitions are YAML, one automation a file. Two keys are ours, resolved here:
- `notify: {subject, body}` adds the notification action: through the Prefect notification block
  `DRIFTLOOP_NOTIFY_BLOCK` (a webhook from `DRIFTLOOP_NOTIFY_WEBHOOK_URL`, created or updated here), or, without a
  webhook, by running the `notify` deployment, which logs the message.
- `silence: drift` sets a proactive trigger's `within` to DRIFTLOOP_SILENCE_DRIFT_MULTIPLE x the `drift`
  deployment's schedule interval; `silence: traffic` to DRIFTLOOP_SILENCE_TRAFFIC_MINUTES.
"""

from __future__ import annotations

import argparse
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml
from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.utilities.asyncutils import run_coro_as_sync

from automations.settings import AutomationSettings, get_settings

HERE = Path(__file__).parent
NOTIFY_DEPLOYMENT = "notify/notify"
DRIFT_DEPLOYMENT = "drift/drift"


@dataclass(frozen=True)
class Wiring:
    """What the definitions refer to by name, resolved on the server."""

    deployment_ids: dict[str, uuid.UUID]
    notify_block_id: uuid.UUID | None = None
    """The notification block; None: notifications run the `notify` deployment."""
    silence_seconds: dict[str, float] | None = None


def definitions(folder: Path = HERE) -> list[tuple[Path, dict]]:
    """Every automation definition in the folder, as parsed YAML."""
    return [(path, yaml.safe_load(path.read_text())) for path in sorted(folder.glob("*.yaml"))]


def _notification(message: dict, wiring: Wiring) -> dict:
    subject, body = message["subject"], message["body"]
    if wiring.notify_block_id is not None:
        return {"type": "send-notification", "block_document_id": wiring.notify_block_id, "subject": subject,
                "body": body}  # fmt: skip
    return {
        "type": "run-deployment",
        "source": "selected",
        "deployment_id": wiring.deployment_ids[NOTIFY_DEPLOYMENT],
        "parameters": {"subject": subject, "body": body},
    }


def build(definition: dict, wiring: Wiring | dict[str, uuid.UUID]) -> Automation:
    """Turn a definition into a validated Automation: deployments by id, the notification action, silence windows."""
    if not isinstance(wiring, Wiring):
        wiring = Wiring(deployment_ids=wiring)
    spec = dict(definition)
    message = spec.pop("notify", None)
    silence = spec.pop("silence", None)
    actions = []
    for action in spec.get("actions", []):
        action = dict(action)
        if "deployment" in action:
            action["deployment_id"] = wiring.deployment_ids[action.pop("deployment")]
        actions.append(action)
    if message is not None:
        actions.append(_notification(message, wiring))
    spec["actions"] = actions
    if silence is not None and wiring.silence_seconds is not None:
        spec["trigger"] = {**spec["trigger"], "within": wiring.silence_seconds[silence]}
    return Automation.model_validate(spec)


def referenced_deployments(defs: list[tuple[Path, dict]], *, webhook: bool = False) -> set[str]:
    """The `flow/deployment` names the definitions run (and the `notify` deployment when notifications need it)."""
    names = {a["deployment"] for _, d in defs for a in d.get("actions", []) if "deployment" in a}
    if not webhook and any("notify" in d for _, d in defs):
        names.add(NOTIFY_DEPLOYMENT)
    return names


async def _drift_interval(client) -> float:
    """Seconds between the `drift` deployment's scheduled runs (hourly when it has no interval schedule)."""
    from prefect.exceptions import ObjectNotFound

    try:
        drift = await client.read_deployment_by_name(DRIFT_DEPLOYMENT)
    except ObjectNotFound:
        return 3600.0
    schedules = await client.read_deployment_schedules(drift.id)
    found = [s.schedule.interval.total_seconds() for s in schedules if hasattr(s.schedule, "interval")]
    return min(found) if found else 3600.0


async def _wire(names: set[str], settings: AutomationSettings) -> Wiring:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    async with get_client() as client:
        ids = {name: (await client.read_deployment_by_name(name)).id for name in names}
        interval = await _drift_interval(client)
    block_id = None
    if settings.notify_webhook_url:
        block = CustomWebhookNotificationBlock(
            name="driftloop",
            url=settings.notify_webhook_url,
            json_data={"subject": "{{subject}}", "body": "{{body}}", "text": "{{subject}}\n{{body}}"},
        )
        block_id = await block.save(settings.notify_block, overwrite=True)
    silence = {
        "drift": max(10.0, settings.silence_drift_multiple * interval),
        "traffic": max(10.0, settings.silence_traffic_minutes * 60),
    }
    return Wiring(deployment_ids=ids, notify_block_id=block_id, silence_seconds=silence)


def apply(folder: Path = HERE, settings: AutomationSettings | None = None) -> list[Automation]:
    """Create or update every automation in `folder` on the server that PREFECT_API_URL names."""
    settings = settings or get_settings()
    defs = definitions(folder)
    if not defs:
        raise SystemExit(f"no automation definitions (*.yaml) in {folder}")
    names = referenced_deployments(defs, webhook=bool(settings.notify_webhook_url))
    wiring = run_coro_as_sync(_wire(names, settings))
    if wiring.notify_block_id is None:
        print("notifications: no DRIFTLOOP_NOTIFY_WEBHOOK_URL, so each one runs the `notify` deployment, which logs it")
    else:
        print(f"notifications: through the Prefect block {settings.notify_block!r} to the configured webhook")
    applied = []
    for path, definition in defs:
        automation = build(definition, wiring)
        try:
            existing = Automation.read(name=automation.name)
        except ValueError:
            automation = automation.create()
            print(f"created automation {automation.name!r} ({path.name})")
        else:
            automation.id = existing.id
            automation.update()
            print(f"updated automation {automation.name!r} ({path.name})")
        applied.append(automation)
    return applied


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=HERE, help="folder of *.yaml definitions")
    args = parser.parse_args(argv)
    if not os.environ.get("PREFECT_API_URL"):
        # Without it Prefect would start a throwaway server and "apply" to nothing.
        raise SystemExit("PREFECT_API_URL is not set: point it at the Prefect server to apply the automations to")
    apply(args.folder)


if __name__ == "__main__":
    main()
