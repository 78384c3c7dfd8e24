"""Every name the two sides share is defined once, in `contracts/`: a literal copy anywhere else fails here.

The shared vocabulary is read from the contracts themselves (module constants and the closed sets of their
`Literal` types), then every string literal of the project's own code outside `contracts/` is compared with it.
Docstrings are prose and do not count; tests and YAML are checked elsewhere (the YAML against the event names).
"""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest

import contracts
from contracts import api, auth, decision, events, registry

ROOT = Path(__file__).resolve().parents[2]
CODE = ("flows", "serving", "automations", "deployments", "bench")
"""Files allowed to keep copies for now (none: the issue-7 rewrite landed)."""
MODULES = (api, auth, decision, events, registry)


def _shared_names() -> dict[str, str]:
    """Contract value -> the name that defines it, for values that carry meaning on their own."""
    names: dict[str, str] = {}
    for module in MODULES:
        for name, value in vars(module).items():
            if not name.isupper() or name.startswith("_"):
                continue
            if isinstance(value, str) and (value.startswith("/") or "." in value or "-" in value):
                names.setdefault(value, f"{module.__name__}.{name}")
    # closed sets: arm names and decision names
    for label, alias in (("contracts.api.Arm", api.Arm), ("contracts.api.DecisionName", api.DecisionName)):
        for value in typing.get_args(alias):
            names.setdefault(value, label)
    return names


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                ids.add(id(body[0].value))
    # attribute docstrings (a string right after an assignment)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for stmt in body:
                if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                    ids.add(id(stmt.value))
    return ids


def _copies(path: Path, shared: dict[str, str]) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    prose = _docstrings(tree)
    # pieces of f-strings are left alone: they build other services' addresses (`f"{prefect_url}/health"`)
    prose |= {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    hits = [
        (node.lineno, node.col_offset, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in prose
        and node.value in shared
    ]
    return [f"{where}:{line}: {value!r} (use {shared[value]})" for line, _, value in sorted(hits)]


def test_the_vocabulary_is_read_from_the_contracts():
    shared = _shared_names()
    assert shared[events.DRIFT_DETECTED] == "contracts.events.DRIFT_DETECTED"
    assert shared[api.ROUTE_PREDICT] == "contracts.api.ROUTE_PREDICT"
    assert registry.TAG_LOOP_ID in shared and registry.AB_EXPERIMENT in shared
    assert {registry.CHAMPION, registry.CHALLENGER, api.PROMOTE, api.ROLLBACK, api.INVALID, api.CONTINUE} <= set(shared)


def test_a_literal_copy_is_found(tmp_path: Path):
    """The check itself: a module that types a tag, a route and an arm name by hand is caught, its docstring is not."""
    sample = tmp_path / "probe.py"
    sample.write_text(
        '"""Mentions driftloop.loop_id in prose only."""\n'
        f"TAGS = {{{registry.TAG_LOOP_ID!r}: 'x'}}\n"
        f"PATH = {api.ROUTE_FEEDBACK!r}\n"
        f"ARM = {registry.CHALLENGER!r}\n"
    )
    found = _copies(sample, _shared_names())
    assert [line.split(": ", 1)[1].split(" ")[0] for line in found] == [
        repr(registry.TAG_LOOP_ID),
        repr(api.ROUTE_FEEDBACK),
        repr(registry.CHALLENGER),
    ]


@pytest.mark.parametrize("folder", CODE)
def test_no_literal_copy_of_a_contract_value(folder: str):
    shared = _shared_names()
    copies = [hit for path in sorted((ROOT / folder).rglob("*.py")) for hit in _copies(path, shared)]
    assert not copies, "names defined in contracts/ typed again:\n" + "\n".join(copies)


def test_contracts_import_nothing_of_the_project_but_contracts():
    for path in Path(contracts.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("flows", "serving", "deployments", "automations")), path
