"""One export at a time per bundle: an advisory ``flock`` on ``OUT/.NAME.edgepack.lock``.

A second export to the same destination is refused at once (never interleaved, never queued behind a hung
one). The lock file is removed on release; a lock file left by a killed process holds no lock and is reused.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from edgepack.errors import OutputError


class BundleLock:
    """Context manager holding the exclusive export lock of ``destination`` (a ``NAME.edgepack`` path)."""

    def __init__(self, destination: Path) -> None:
        self.destination = destination
        self.path = destination.parent / f".{destination.name}.lock"
        self._fd: int | None = None

    def __enter__(self) -> "BundleLock":
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise OutputError(
                    f"{self.destination}: another export is writing this bundle{holder}",
                    hint="wait for it to finish or choose another --out",
                ) from None
            # The previous holder may have unlinked the file between our open and flock: lock the live file.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return f" (process {pid})" if pid.isdigit() else ""
