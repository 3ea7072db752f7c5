"""Every expected, user-facing failure is an :class:`EdgepackError`.

The CLI prints ``str(error)`` as one line on stderr and exits with :attr:`EdgepackError.exit_code`.
Messages name the offending input and, where there is one, the fix.
"""

from __future__ import annotations


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


class ToolchainError(EdgepackError):
    """A vendor toolchain is missing or failed while converting."""


class ExportError(EdgepackError):
    """Converting the model for one target failed."""


class ParityError(EdgepackError):
    """An artifact's outputs differ from the source model's beyond the recipe tolerance."""


class OutputError(EdgepackError):
    """The output location cannot be written: no space left, no permission, or another export holds it."""


class Terminated(BaseException):
    """SIGTERM arrived. Like :class:`KeyboardInterrupt` it is not an ``Exception``, so per-target error
    handling cannot swallow it: it unwinds every ``finally`` (staging and temp dirs are removed)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"terminated by signal {signum}")


class BundleError(EdgepackError):
    """A bundle cannot be written, or a written bundle does not verify."""

    exit_code = 1
