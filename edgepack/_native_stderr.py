"""Keep the toolchains' native start-up chatter off the terminal, without hiding their real errors.

TensorFlow (imported in-process by coremltools) writes ``I0000 ... port.cc:153] oneDNN custom operations are
on``, ``I0000 ... cudart_stub.cc:31] Could not find cuda drivers`` and an absl ``WARNING: All log messages before
absl::InitializeLog()`` line straight to file descriptor 2 from C++; ``TF_CPP_MIN_LOG_LEVEL`` does not reach
them. INFO-level (``I``) lines are dropped; warnings and errors (``W``/``E``/``F``) always pass. :func:`filtered_native_stderr` points descriptor 2 at a
scratch file for the duration of a command and forwards every line of it to the real stderr except the known
noise (:data:`NOISE`); Python's own ``sys.stderr`` (progress, warnings, errors) keeps writing to the terminal
directly, so TTY detection and colours are unchanged.

A nameless file (``O_TMPFILE``), not a pipe: a writer can never block on it (a C++ logger holding the GIL would deadlock on a full
pipe whose reader is a Python thread). Forwarded lines can lag by up to :data:`POLL_S`.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

NOISE = re.compile(
    rb"^(I\d{4} \S+ +\d+ \S+:\d+\] "  # absl/glog INFO lines (oneDNN is on, no CUDA driver, ...)
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|scikit-learn version \S+ is not supported\."
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.)"
)
"""Lines of native start-up chatter dropped from the terminal (everything else is forwarded)."""
POLL_S = 0.05


class _Forwarder(threading.Thread):
    def __init__(self, source: BinaryIO, target_fd: int, verbose: bool) -> None:
        super().__init__(name="edgepack-native-stderr", daemon=True)
        self.source, self.target_fd, self.verbose = source, target_fd, verbose
        self.done = threading.Event()
        self.dropped: list[bytes] = []

    def run(self) -> None:
        with self.source as source:
            pending = b""
            while True:
                finished = self.done.is_set()
                chunk = source.read()
                if chunk:
                    pending = self._forward(pending + chunk)
                elif finished:
                    break
                else:
                    self.done.wait(POLL_S)
            if pending:
                self._forward(pending + b"\n")

    def _forward(self, data: bytes) -> bytes:
        *lines, rest = data.split(b"\n")
        for line in lines:
            if not self.verbose and NOISE.match(line):
                self.dropped.append(line)
                continue
            os.write(self.target_fd, line + b"\n")
        return rest


def _writes_to_fd2(stream: object) -> bool:
    try:
        return stream.fileno() == 2  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


@contextmanager
def filtered_native_stderr(verbose: bool = False) -> Iterator[list[bytes]]:
    """Within the block, native writes to descriptor 2 reach the real stderr minus :data:`NOISE` lines
    (``verbose``: nothing is dropped). Yields the list of dropped lines (filled when the block ends)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 (embedded interpreters): nothing to filter
        yield []
        return
    sink = tempfile.TemporaryFile(prefix="edgepack-stderr-")  # O_TMPFILE: no name, nothing left if killed
    handle = sink.fileno()
    reader = open(f"/proc/self/fd/{handle}", "rb")  # its own offset (a dup would share the writers')
    python_stderr = sys.stderr
    forwarder = _Forwarder(reader, saved, verbose)
    replace_python_stderr = _writes_to_fd2(python_stderr)  # not when a test harness captured sys.stderr
    try:
        if replace_python_stderr:
            sys.stderr = open(os.dup(saved), "w", buffering=1, errors="backslashreplace",
                              encoding=getattr(python_stderr, "encoding", None) or "utf-8")
        os.dup2(handle, 2)
        forwarder.start()
        yield forwarder.dropped
    finally:
        try:
            sys.stderr.flush()
            if replace_python_stderr:
                sys.stderr.close()
        finally:
            sys.stderr = python_stderr
            os.dup2(saved, 2)
            forwarder.done.set()
            if forwarder.ident is not None:
                forwarder.join(timeout=5)
            else:
                reader.close()
            sink.close()
            os.close(saved)
