"""The README's bench tables: each bench rewrites its own table, between `<!-- bench:<name>:start -->` and
`<!-- bench:<name>:end -->`, from the results it recorded (so every figure there comes from a command in the repo)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def write_table(marker: str, text: str, readme: Path = README) -> bool:
    """Replace the table between a bench's markers.

    Args:
        marker: The bench's name in its markers, e.g. `router` for `<!-- bench:router:start -->`.
        text: The new table (markdown).
        readme: The file to rewrite.

    Returns:
        Whether the table was written: when a marker is missing the file is left alone, with a warning.
    """
    start, end = f"<!-- bench:{marker}:start -->", f"<!-- bench:{marker}:end -->"
    content = readme.read_text()
    if start not in content or end not in content:
        print(f"{readme.name} has no {marker} markers; table not written", file=sys.stderr)
        return False
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{text}\n{end}{tail}")
    return True


def write_results_table(results: Path, marker: str, table: Callable[[list[dict]], str]) -> None:
    """Rewrite the README's table of a bench from every run recorded in its results file."""
    if results.exists():
        write_table(marker, table(json.loads(results.read_text())["runs"]))
