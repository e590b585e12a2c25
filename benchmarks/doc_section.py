"""Write a benchmark's Markdown into its own marked section of docs/benchmarks.md (the rest stays as it is)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_section(name: str, section: str, doc: Path = DOC) -> None:
    """Replace the text between ``<!-- NAME -->`` and ``<!-- /NAME -->`` (append the section when they are absent)."""
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    block = f"{begin}\n{section.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text)


def print_tables(make: Callable[[], None], section: str | None) -> None:
    """Run ``make`` (a report's main, which prints its tables), print what it printed and, with ``section``, also
    write that text into that section of docs/benchmarks.md: the doc holds exactly what the command printed."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        make()
    print(buffer.getvalue(), end="")
    if section:
        write_section(section, buffer.getvalue())
