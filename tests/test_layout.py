"""The layout is the architecture: every module says what it is for, and the README's layout table names it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE = ("contracts", "flows", "serving", "automations", "deployments", "bench")
MODULES = sorted(p for folder in CODE for p in (ROOT / folder).rglob("*.py"))


def _layout_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Layout")
    end = readme.index("\n## ", start + 1)
    return readme[start:end]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_opens_with_a_docstring_that_says_what_it_is_for(path: Path):
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    first = docstring.strip().splitlines()[0] if docstring.strip() else ""
    # a placeholder like """flows.""" names the package instead of saying what it holds
    assert len(first.split()) >= 4, f"{path.relative_to(ROOT)}: {first!r}"


def test_the_readme_layout_table_names_every_module():
    layout = _layout_section()
    missing = [
        str(p.relative_to(ROOT))
        for p in MODULES
        if p.name != "__init__.py" and f"`{p.relative_to(ROOT)}`" not in layout
    ]
    assert not missing, "modules missing from the README's layout table: " + ", ".join(missing)
