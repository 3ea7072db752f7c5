"""Internal fault-injection hook for the reliability tests (never set in normal use).

``EDGEPACK_FAULT=POINT:SIGNAL`` makes the process send itself ``SIGNAL`` (``SIGKILL``, ``SIGINT``,
``SIGTERM``) when it reaches the named point, so a test can kill an export at an exact moment instead of
racing a timer. ``EDGEPACK_FAULT=POINT:ENOSPC`` raises ``OSError(ENOSPC)`` there instead. Points:

``export.target-done``  a target was exported (before the next one starts)
``bundle.staged``       the new bundle is complete in its staging directory, not yet swapped in
``swap.before``         just before the staged directory replaces the destination
``swap.between``        between the two renames of the fallback swap (old moved aside, new not yet in)
``swap.after``          the new directory is in place, the old one not yet deleted
``cache.staged``        a cache entry is written to its temp name, not yet renamed into place
"""

from __future__ import annotations

import errno
import os
import signal

FAULT_ENV = "EDGEPACK_FAULT"


def fault_point(name: str) -> None:
    """Trigger the fault configured for ``name`` in ``$EDGEPACK_FAULT``, if any."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, _, action = spec.partition(":")
    if point != name:
        return
    if action == "ENOSPC":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"<fault {name}>")
    signal.raise_signal(getattr(signal, action or "SIGKILL"))  # a Python handler runs before this returns
