"""What every ``edgepack`` subcommand shares: the error envelope (one line on stderr, the error's exit code, the
``--json`` envelope), target-list parsing and the console. :mod:`edgepack.cli` and the subsystem CLIs
(``package``, ``farm``, ``search``, ``toolchains``) import it; it imports none of them."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import typer

from edgepack import signals
from edgepack._native_stderr import filtered_native_stderr
from edgepack.errors import EdgepackError, InputError, Terminated

CONTEXT = {"help_option_names": ["-h", "--help"]}


@dataclass
class _Verbosity:
    on: bool = False


VERBOSE = _Verbosity()
"""``edgepack --verbose``: toolchains' native stderr is passed through instead of filtered."""


def make_console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


@contextmanager
def warnings_to_stderr() -> Iterator[None]:
    """edgepack's own warnings (e.g. an evicted cache entry) as ``edgepack: warning: ...`` lines on stderr,
    for the duration of one command: the handler is removed (and propagation restored) when it ends, so a
    process that runs several commands (tests, notebooks) never writes to a stream an earlier one closed."""
    import logging

    logger = logging.getLogger("edgepack")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("edgepack: warning: %(message)s"))
    handler.setLevel(logging.WARNING)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def error_record(kind: str, message: str, exit_code: int, hint: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "hint": hint, "exit_code": exit_code, **extra}


@contextmanager
def user_errors(json_command: str | None = None) -> Iterator[None]:
    """One line on stderr and the error's exit code for every expected failure; SIGINT/SIGTERM unwind
    (removing staged files) and exit 130/143, even where a toolchain swallowed them
    (:func:`edgepack.signals.listen`). With ``json_command`` (``--json``) the failure is also printed as
    the JSON envelope on stdout, with the same exit code."""
    with warnings_to_stderr(), filtered_native_stderr(verbose=VERBOSE.on), signals.listen():
        try:
            yield
        except EdgepackError as exc:
            message = " ".join(str(exc).split())
            print(f"edgepack: error: {message}", file=sys.stderr)
            if json_command:
                print_envelope(json_command, None, ok=False, errors=[error_record(
                    type(exc).__name__, " ".join(exc.message.split()), exc.exit_code, exc.hint)])
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            print("edgepack: interrupted", file=sys.stderr)
            if json_command:
                print_envelope(json_command, None, ok=False, errors=[error_record("Interrupted", "interrupted", 130)])
            raise typer.Exit(130) from None
        except Terminated as exc:
            print("edgepack: terminated", file=sys.stderr)
            if json_command:
                print_envelope(json_command, None, ok=False,
                                errors=[error_record("Terminated", "terminated", 128 + exc.signum)])
            raise typer.Exit(128 + exc.signum) from None


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def print_envelope(command: str, result: Any, *, ok: bool = True, errors: list[dict[str, Any]] | None = None) -> None:
    """The one ``--json`` shape of every command: ``{"ok", "command", "result", "errors"}``."""
    print_json({"ok": ok, "command": command, "result": result, "errors": list(errors or [])})


def go_offline(flag: bool) -> None:
    """``--offline``: nothing this process runs may download (read by :mod:`edgepack.models.pretrained`)."""
    import os

    if flag:
        os.environ["EDGEPACK_OFFLINE"] = "1"


def split_targets(values: Optional[list[str]] | str | None) -> list[str]:
    """``--target a,b --target c`` -> ``[a, b, c]`` (empty items dropped)."""
    if values is None:
        return []
    items = [values] if isinstance(values, str) else values
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


def one_target(values: Optional[list[str]] | str | None, command: str) -> str | None:
    targets = split_targets(values)
    if len(targets) > 1:
        raise InputError(f"'{command}' takes one --target, got {len(targets)}: {', '.join(targets)}",
                         hint="run it once per target")
    return targets[0] if targets else None


def canonical_ids(registry: Any, targets: list[str]) -> list[str]:
    ids = []
    for target in targets:
        try:
            ids.append(registry.get(target).id)
        except EdgepackError:
            ids.append(target)
    return ids
