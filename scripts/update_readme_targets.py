"""Regenerate the README's target table from the registry (tests/test_docs.py checks it)."""

from __future__ import annotations

from pathlib import Path

from edgepack.exporters.registry import available_runtimes
from edgepack.targets.registry import load_registry
from edgepack.targets.table import markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- targets:begin -->\n", "<!-- targets:end -->"


def main() -> None:
    text = README.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    table = markdown_table(load_registry(), set(available_runtimes()))
    README.write_text(f"{head}{BEGIN}{table}{END}{tail}")


if __name__ == "__main__":
    main()
