"""Filesystem primitives every writer shares: owned temp names, atomic directory swaps, stale sweeps.

* Temp files and directories edgepack creates carry the creating process id (``PREFIX<pid>.<random>SUFFIX``),
  so a later run can tell a leftover of a killed process (:func:`sweep_stale`) from another live export's.
* :func:`swap_into_place` replaces a directory atomically: ``renameat2(RENAME_EXCHANGE)`` where the kernel
  and filesystem have it (one step, nothing to recover), else two renames with SIGINT/SIGTERM blocked
  between them and a rollback on any exception. A process killed (SIGKILL) between the two renames leaves
  the old directory in ``.NAME.<pid>.<random>.old/previous``: :func:`recover_retired` puts it back.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgepack._faults import fault_point

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
RETIRED_SUFFIX = ".old"
RETIRED_CHILD = "previous"
_OWNED = re.compile(r"(?P<pid>\d+)\.[^.]+$")


def owned_name(prefix: str) -> str:
    """``PREFIX<pid>.`` - the start of a temp name this process owns (see :func:`sweep_stale`)."""
    return f"{prefix}{os.getpid()}."


def make_temp_dir(prefix: str, directory: Path | None = None, suffix: str = "") -> Path:
    """A new directory ``PREFIX<pid>.<random>SUFFIX`` in ``directory`` (the system temp dir by default)."""
    return Path(tempfile.mkdtemp(prefix=owned_name(prefix), suffix=suffix, dir=directory))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(directory: Path, prefix: str, suffix: str = "", *, all_owners: bool = False) -> list[Path]:
    """Remove ``directory/PREFIX<pid>.<random>SUFFIX`` entries whose process is gone (every one but this
    process's own with ``all_owners``, for callers holding a lock that excludes other writers). Returns what
    was removed; errors are ignored (a sweep never fails the run that does it)."""
    removed: list[Path] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not name.startswith(prefix) or not name.endswith(suffix):
            continue
        middle = name[len(prefix): len(name) - len(suffix)] if suffix else name[len(prefix):]
        match = _OWNED.fullmatch(middle)
        if match is None:
            continue
        pid = int(match.group("pid"))
        if pid == os.getpid() or (not all_owners and _pid_alive(pid)):
            continue
        remove_path(entry)
        removed.append(entry)
    return removed


def remove_path(path: Path) -> None:
    """Delete a file or directory tree, ignoring errors."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


@functools.cache
def _renameat2() -> Any | None:
    if sys.platform != "linux" or os.environ.get("EDGEPACK_NO_RENAME_EXCHANGE"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def exchange(first: Path, second: Path) -> bool:
    """Atomically swap two existing paths (``renameat2(RENAME_EXCHANGE)``). ``False`` when the platform or
    filesystem cannot; other failures raise :class:`OSError`."""
    function = _renameat2()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


@contextmanager
def signals_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM are held (delivered on exit) inside the block, on the main thread."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def swap_into_place(staging: Path, destination: Path) -> None:
    """Move the directory ``staging`` to ``destination`` (same filesystem), replacing a directory there.

    Readers see the old or the new directory, never a mix or nothing: an atomic exchange where available,
    else two renames with SIGINT/SIGTERM blocked in between and the old directory put back on any exception.
    The replaced directory is deleted afterwards."""
    if not destination.exists():
        fault_point("swap.before")
        os.rename(staging, destination)
        fault_point("swap.after")
        return
    fault_point("swap.before")
    if exchange(staging, destination):
        fault_point("swap.after")
        remove_path(staging)  # now the old directory
        return
    retired = make_temp_dir(f".{destination.name}.", destination.parent, RETIRED_SUFFIX)
    try:
        with signals_blocked():
            os.rename(destination, retired / RETIRED_CHILD)
            try:
                fault_point("swap.between")
                os.rename(staging, destination)
            except BaseException:
                os.rename(retired / RETIRED_CHILD, destination)
                raise
        fault_point("swap.after")
    finally:  # the old directory (or, after a rollback, an empty folder); a held signal lands here too
        remove_path(retired)


def recover_retired(destination: Path) -> Path | None:
    """After a kill between :func:`swap_into_place`'s two renames: put a stranded old directory back when
    ``destination`` is missing, and delete stranded copies otherwise. Returns the directory put back."""
    restored: Path | None = None
    try:
        entries = sorted(destination.parent.glob(f".{destination.name}.*{RETIRED_SUFFIX}"))
    except OSError:
        return None
    for retired in entries:
        if _OWNED.fullmatch(retired.name[len(destination.name) + 2: -len(RETIRED_SUFFIX)]) is None:
            continue
        previous = retired / RETIRED_CHILD
        if previous.is_dir() and not destination.exists():
            os.rename(previous, destination)
            restored = destination
        remove_path(retired)
    return restored


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` and the directories holding them to disk."""
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    for folder in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        fsync_dir(folder)


def fsync_dir(folder: Path) -> None:
    """Flush a directory's entries (renames into it) to disk, where the platform allows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | str, *, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` through a temp file owned by this process in the same directory, fsynced,
    given ``mode`` (temp files are created 0600) and renamed into place: readers see the old file or the
    new one, never a half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=owned_name(f".{path.name}."), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as sink:
            sink.write(data.encode("utf-8") if isinstance(data, str) else data)
            sink.flush()
            os.fsync(sink.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path
