"""Apply every automation in this folder to the Prefect server: read by name, then create or update."""

from __future__ import annotations

import argparse
import os
import uuid
from pathlib import Path

import yaml
from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.utilities.asyncutils import run_coro_as_sync

HERE = Path(__file__).parent


def definitions(folder: Path = HERE) -> list[tuple[Path, dict]]:
    """Every automation definition in the folder, as parsed YAML."""
    return [(path, yaml.safe_load(path.read_text())) for path in sorted(folder.glob("*.yaml"))]


def build(definition: dict, deployment_ids: dict[str, uuid.UUID]) -> Automation:
    """Turn a definition into a validated Automation, resolving `deployment: flow/name` to the deployment id."""
    spec = dict(definition)
    actions = []
    for action in spec.get("actions", []):
        action = dict(action)
        if "deployment" in action:
            action["deployment_id"] = deployment_ids[action.pop("deployment")]
        actions.append(action)
    spec["actions"] = actions
    return Automation.model_validate(spec)


async def _deployment_ids(names: set[str]) -> dict[str, uuid.UUID]:
    async with get_client() as client:
        return {name: (await client.read_deployment_by_name(name)).id for name in names}


def apply(folder: Path = HERE) -> list[Automation]:
    """Create or update every automation in `folder` on the server that PREFECT_API_URL names."""
    defs = definitions(folder)
    if not defs:
        raise SystemExit(f"no automation definitions (*.yaml) in {folder}")
    names = {a["deployment"] for _, d in defs for a in d.get("actions", []) if "deployment" in a}
    ids = run_coro_as_sync(_deployment_ids(names))
    applied = []
    for path, definition in defs:
        automation = build(definition, ids)
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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", nargs="?", type=Path, default=HERE, help="folder of *.yaml definitions")
    args = parser.parse_args(argv)
    if not os.environ.get("PREFECT_API_URL"):
        # Without it Prefect would start a throwaway server and "apply" to nothing.
        raise SystemExit("PREFECT_API_URL is not set: point it at the Prefect server to apply the automations to")
    apply(args.folder)


if __name__ == "__main__":
    main()
