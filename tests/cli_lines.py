"""Reading the CLI's stderr in tests: progress lines (``HH:MM:SS ...``, printed when stderr is not a
terminal) are set apart from the lines a test asserts on (errors, warnings)."""

from __future__ import annotations

import re

PROGRESS_LINE = re.compile(r"^\d\d:\d\d:\d\d ")


def message_lines(stderr: str) -> list[str]:
    """Non-empty stderr lines that are not timestamped progress lines."""
    return [line for line in stderr.strip().splitlines() if line.strip() and not PROGRESS_LINE.match(line)]
