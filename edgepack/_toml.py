"""Reading TOML data files and turning pydantic validation errors into ``file: field: problem`` lines."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from edgepack.errors import ProfileError

ModelT = TypeVar("ModelT", bound=BaseModel)


def read_toml(path: Path) -> dict[str, Any]:
    """Parse one TOML file, raising :class:`ProfileError` naming the file on a syntax error."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ProfileError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{path}: invalid TOML: not UTF-8 text (byte {exc.start})") from None
    except RecursionError:
        raise ProfileError(f"{path}: invalid TOML: nested too deeply") from None


def describe_validation_error(path: Path | str, exc: ValidationError) -> str:
    """Return ``file: field.path: problem`` for the first error (plus a count of the others)."""
    errors = exc.errors()
    first = errors[0]
    location = ".".join(str(part) for part in first["loc"]) or "<root>"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{path}: {location}: {message}{more}"


def validate(model: type[ModelT], data: dict[str, Any], path: Path | str) -> ModelT:
    """Validate ``data`` against ``model``; raise :class:`ProfileError` naming file and field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(describe_validation_error(path, exc)) from None
