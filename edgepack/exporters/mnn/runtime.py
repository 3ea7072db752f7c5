"""The MNN Python runtime, imported with its native start-up chatter kept off the terminal.

``import MNN`` (and creating a runtime manager) prints ``The device supports: ...`` and ``MNN use high
precision`` from C straight to file descriptor 1, which ``--json`` output owns. Import MNN through
:func:`mnn` (or import this module) and wrap native calls that print in :func:`quiet_native`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType

_log = logging.getLogger(__name__)


@contextlib.contextmanager
def quiet_native() -> Iterator[None]:
    """Point file descriptors 1 and 2 at a scratch file while the block runs; what was captured is logged at
    DEBUG level."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError):
            pass
    try:
        saved = (os.dup(1), os.dup(2))
    except OSError:  # no fd 1/2 (daemonised): nothing to protect
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            captured = sink.read().decode("utf-8", "replace").strip()
            if captured:
                _log.debug("MNN: %s", captured)


def mnn() -> ModuleType:
    """The ``MNN`` module, imported quietly (raises ImportError when it is not installed)."""
    if "MNN" not in sys.modules:
        with quiet_native():
            import MNN  # noqa: F401
    return sys.modules["MNN"]


mnn()
