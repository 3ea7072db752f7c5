"""Short, user-facing text from exceptions (one line, never a traceback)."""

from __future__ import annotations


def first_line(exc: BaseException | object, limit: int = 300) -> str:
    """The first non-blank line of ``exc``'s message, at most ``limit`` characters; the exception's type name
    when the message is empty."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]
