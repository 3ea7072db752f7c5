"""Signal handlers that still run when a library leaves the thread a dangling alternate signal stack.

CPython installs every Python-level handler with ``SA_ONSTACK``, so the kernel builds the signal frame on
the receiving thread's alternate signal stack whenever one is set. OpenVINO's CPU plugin (2026.4) gives
the thread that creates a plugin engine an alternate stack (room for AMX state) and, in the engine's
destructor, unmaps it and restores the previous one -- on whichever thread drops the last reference.
When that is not the creating thread (Python's cyclic GC runs on any thread), the creating thread keeps
an alternate stack that no longer exists, and the next SIGTERM or SIGINT delivered to it kills the process
with SIGSEGV (``si_code`` SI_KERNEL: the kernel could not write the frame) instead of running the handler:
no cleanup, staged files left behind.

Python's C-level handler only records the signal for the main loop, so it runs safely on the ordinary
thread stack. :func:`install` sets a handler and then clears ``SA_ONSTACK`` for that signal (Linux, glibc or
musl ``struct sigaction`` on x86-64 and AArch64; elsewhere it is a plain :func:`signal.signal`).

A handler raises in whatever Python code runs when the signal lands, which may be a callback from C++:
OpenVINO's model conversion turns the exception into ``RuntimeError: Check 'false' failed`` and an export
would carry on down the recipe chain. :func:`listen` therefore also records the signal, and the pipeline
calls :func:`raise_if_interrupted` wherever it treats an exception as one attempt's failure and before it
publishes a bundle.
"""

from __future__ import annotations

import ctypes
import functools
import platform
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from edgepack.errors import Terminated

_SA_ONSTACK = 0x08000000
_SIGSET_WORDS = 1024 // (8 * ctypes.sizeof(ctypes.c_ulong))


class _SigAction(ctypes.Structure):
    """``struct sigaction`` as glibc and musl lay it out on x86-64 and AArch64."""

    _fields_ = [
        ("handler", ctypes.c_void_p),
        ("mask", ctypes.c_ulong * _SIGSET_WORDS),
        ("flags", ctypes.c_int),
        ("restorer", ctypes.c_void_p),
    ]


@functools.cache
def _libc() -> Any | None:
    if sys.platform != "linux" or platform.machine() not in {"x86_64", "aarch64"}:
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _action(signum: int) -> _SigAction | None:
    """The kernel's current ``sigaction`` for ``signum`` (None where it cannot be read here)."""
    libc = _libc()
    action = _SigAction()
    if libc is None or libc.sigaction(signum, None, ctypes.byref(action)) != 0:
        return None
    return action


def runs_on_alternate_stack(signum: int) -> bool | None:
    """Whether the kernel would run ``signum``'s handler on the alternate stack (None: cannot tell here)."""
    action = _action(signum)
    return None if action is None else bool(action.flags & _SA_ONSTACK)


def _run_on_thread_stack(signum: int) -> None:
    action = _action(signum)
    if action is None or not action.flags & _SA_ONSTACK:
        return
    action.flags &= ~_SA_ONSTACK
    _libc().sigaction(signum, ctypes.byref(action), None)


def install(signum: int, handler: Any) -> Any:
    """:func:`signal.signal`, but a Python handler runs on the thread's own stack; returns the previous one."""
    previous = signal.signal(signum, handler)
    if callable(handler):
        _run_on_thread_stack(signum)
    return previous


_received: list[int] = []


def _interruption(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def _interrupt(signum: int, frame: Any) -> None:
    _received.append(signum)
    raise _interruption(signum)


def raise_if_interrupted() -> None:
    """Raise the interruption a library swallowed or rewrapped (KeyboardInterrupt or Terminated), if any."""
    if _received:
        raise _interruption(_received[0])


@contextmanager
def listen() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt and SIGTERM :class:`Terminated`, on the thread's own stack, and both are
    remembered for :func:`raise_if_interrupted`; the previous handlers come back on exit."""
    _received.clear()
    previous = {signum: install(signum, _interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        _received.clear()
