"""Every expected, user-facing failure is an :class:`EdgepackError`.

The CLI prints ``str(error)`` as one line on stderr and exits with :attr:`EdgepackError.exit_code`.
Messages name the offending input and, where there is one, the fix. Exit codes, for every command:

====  =====================================================================================
0     success
1     a target failed, a regression was found, or a bundle failed verification (tampered)
2     usage or input error (bad argument, missing or unreadable file, not a bundle)
3     the environment failed: no space left, an I/O error, permission denied (nothing replaced)
130   interrupted (SIGINT); 143 terminated (SIGTERM)
====  =====================================================================================
"""

from __future__ import annotations

import errno


class EdgepackError(Exception):
    """Base class of every error edgepack reports to a user."""

    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")


class InputError(EdgepackError):
    """A user-supplied argument or file is missing, malformed or inconsistent."""


class SourceError(InputError):
    """The model source cannot be loaded (missing file, corrupt ONNX, bad factory, bad weights)."""


class DataError(InputError):
    """Calibration or evaluation data is unreadable or does not match the model inputs."""


class ProfileError(EdgepackError):
    """A target profile or recipe file is invalid, or a target id is unknown."""


class UnknownTargetError(ProfileError):
    """A target id is not in the registry."""


class UnsupportedError(EdgepackError):
    """A target, runtime or recipe is not supported (yet) by this edgepack build."""


class ExportError(EdgepackError):
    """Converting the model for one target failed."""


class OutputError(EdgepackError):
    """The output location cannot be written: no space left, no permission, or another export holds it."""

    errno: int | None = None


class Terminated(BaseException):
    """SIGTERM arrived. Like :class:`KeyboardInterrupt` it is not an ``Exception``, so per-target error
    handling cannot swallow it: it unwinds every ``finally`` (staging and temp dirs are removed)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"terminated by signal {signum}")


class BundleError(EdgepackError):
    """A bundle cannot be written, or a written bundle does not verify."""

    exit_code = 1


class TamperedError(BundleError):
    """A bundle's files, artifact records or signature do not match its manifest (directory or zip alike)."""


class EnvironmentFailure(OutputError):
    """The machine, not the model, failed: no space left, an I/O error, a read-only or forbidden location.
    Raised instead of recording the failure against a recipe; nothing already published is replaced."""

    exit_code = 3


ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the filesystem",
    errno.EIO: "input/output error",
    errno.EROFS: "read-only filesystem",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
"""errno values that mean the environment failed, with how they are described."""

_ENVIRONMENT_TEXT = {
    "No space left on device": errno.ENOSPC,
    "[Errno 28]": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
    "Input/output error": errno.EIO,
    "Read-only file system": errno.EROFS,
}
"""How a toolchain that ran in another process, or re-wrapped the OSError, reports the same faults."""


def environment_errno(exc: BaseException) -> int | None:
    """The environmental errno behind ``exc`` (its cause/context chain included, and the text a worker
    process or a toolchain re-wrapping the error left), or ``None`` when the failure is not environmental.
    Permission errors count only as a real :class:`PermissionError` (a message may quote one from elsewhere)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, EnvironmentFailure):
            return current.errno
        if isinstance(current, OSError) and current.errno in ENVIRONMENT_ERRNOS:
            return current.errno
        text = str(current)
        for marker, code in _ENVIRONMENT_TEXT.items():
            if marker in text:
                return code
        current = current.__cause__ or current.__context__
    return None


def environment_failure(exc: BaseException, doing: str) -> BaseException:
    """``exc`` as an :class:`EnvironmentFailure` saying what edgepack was ``doing`` when it is environmental
    (else ``exc`` itself, to re-raise)."""
    if isinstance(exc, EnvironmentFailure):
        return exc
    code = environment_errno(exc)
    if code is None:
        return exc
    where = getattr(exc, "filename", None)
    place = f" at {where}" if where else ""
    failure = EnvironmentFailure(f"{ENVIRONMENT_ERRNOS[code]}{place} while {doing}",
                                 hint="free space or fix the location (TMPDIR, --out, the cache dir); "
                                      "nothing was replaced")
    failure.errno = code
    return failure
