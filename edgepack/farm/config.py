"""``farm.toml``: the devices, models, targets/recipes, bench settings and thresholds of a device farm.

Strings may use ``${VAR}`` or ``${VAR:-default}`` (environment variables, e.g. a port or a key path
that differs per farm host). Relative file paths (``identity``, ``known_hosts``, ``calib``, ``eval``
and file sources) are relative to the farm.toml. Unknown keys are refused. Example: ``examples/farm.toml``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from edgepack._schema import StrictModel
from edgepack._toml import describe_validation_error, read_toml
from edgepack.device_bench.config import BenchConfig
from edgepack.errors import EdgepackError, InputError
from edgepack.farm.regress import Thresholds

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
PATH_OPTIONS = ("identity", "known_hosts")
"""Runner options that name files (resolved relative to the farm.toml)."""
FILE_SOURCE_SUFFIXES = (".py", ".onnx", ".pt2", ".pt", ".pth")


class FarmSettings(StrictModel):
    name: str = Field(min_length=1)
    timeout_s: float = Field(600.0, gt=0)
    """Bound of one job attempt on a device (the worker is killed when it is exceeded)."""
    retries: int = Field(2, ge=0)
    """Further attempts after a failed one."""
    backoff_s: float = Field(2.0, ge=0)
    """Delay before the first retry; doubled before each further retry."""
    offline_after: int = Field(3, ge=1)
    """Consecutive failed jobs after which a device is marked offline (its other jobs are skipped)."""


class DeviceSpec(StrictModel):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    profile: str
    """Target profile id the device runs (its jobs are that target's recipes)."""
    runner: str
    """Runner URI: ``host``, ``ssh://user@host[:port]``, ..."""
    options: dict[str, str] = Field(default_factory=dict)
    enabled: bool = True
    """``false``: the device is described but gets no jobs (an opt-in device: ``enabled = "${VAR:-false}"``)."""

    @property
    def resource(self) -> str:
        """Ray custom resource a farm host advertises for this device."""
        return f"device:{self.id}"


class ModelSpec(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    source: str
    calib: str | None = None
    eval: str | None = None
    max_drop: float = Field(0.01, ge=0, le=1)


class TargetSpec(StrictModel):
    id: str
    recipes: list[str] = Field(min_length=1)


class FarmConfig(StrictModel):
    farm: FarmSettings
    bench: dict[str, Any] = Field(default_factory=dict)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    devices: list[DeviceSpec] = Field(min_length=1)
    models: list[ModelSpec] = Field(min_length=1)
    targets: list[TargetSpec] = Field(min_length=1)

    @field_validator("bench")
    @classmethod
    def _bench(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            BenchConfig.from_dict(dict(value))
        except EdgepackError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "FarmConfig":
        for kind, ids in (("device", [d.id for d in self.devices]), ("model", [m.name for m in self.models]),
                          ("target", [t.id for t in self.targets])):
            duplicates = sorted({i for i in ids if ids.count(i) > 1})
            if duplicates:
                raise ValueError(f"duplicate {kind} id(s) {duplicates}")
        if not self.enabled_devices:
            raise ValueError("every device has enabled = false: enable at least one")
        targets = {t.id for t in self.targets}
        for device in self.devices:
            if device.profile not in targets:
                raise ValueError(f"device '{device.id}': profile '{device.profile}' has no [[targets]] entry")
        return self

    @property
    def enabled_devices(self) -> list[DeviceSpec]:
        """The devices that get jobs (``enabled = false`` ones are skipped entirely)."""
        return [d for d in self.devices if d.enabled]

    @property
    def bench_config(self) -> BenchConfig:
        return BenchConfig.from_dict(dict(self.bench))

    def target(self, target_id: str) -> TargetSpec:
        return next(t for t in self.targets if t.id == target_id)

    def device(self, device_id: str) -> DeviceSpec:
        return next(d for d in self.devices if d.id == device_id)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def expand(value: str, where: str) -> str:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in ``value``."""

    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise InputError(f"{where}: environment variable {name} is not set", hint=f"set it or write ${{{name}:-default}}")

    return _VAR.sub(one, value)


def _expand_all(data: Any, where: str) -> Any:
    if isinstance(data, str):
        return expand(data, where)
    if isinstance(data, dict):
        return {k: _expand_all(v, f"{where}.{k}") for k, v in data.items()}
    if isinstance(data, list):
        return [_expand_all(v, f"{where}[{i}]") for i, v in enumerate(data)]
    return data


def _resolve(path: str, base: Path) -> str:
    expanded = Path(path).expanduser()
    return str(expanded if expanded.is_absolute() else (base / expanded).resolve())


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    for device in data.get("devices") or []:
        options = device.get("options") if isinstance(device, dict) else None
        for name in PATH_OPTIONS:
            if isinstance(options, dict) and isinstance(options.get(name), str):
                options[name] = _resolve(options[name], base)
    for model in data.get("models") or []:
        if not isinstance(model, dict):
            continue
        for name in ("calib", "eval"):
            if isinstance(model.get(name), str) and ":" not in model[name]:
                model[name] = _resolve(model[name], base)
        source = model.get("source")
        if isinstance(source, str) and source.endswith(FILE_SOURCE_SUFFIXES) and ":" not in source.split("/")[0]:
            model["source"] = _resolve(source, base)
    return data


def parse_farm(data: dict[str, Any], where: str = "farm.toml", base: Path | None = None) -> FarmConfig:
    """Validate farm data (already parsed TOML); raises :class:`InputError` naming ``where`` and the field."""
    data = _expand_all(data, where)
    data = _resolve_paths(data, base or Path.cwd())
    try:
        config = FarmConfig.model_validate(data)
    except ValidationError as exc:
        raise InputError(describe_validation_error(where, exc)) from None
    _check_registry(config, where)
    return config


def load_farm(path: str | Path) -> FarmConfig:
    """Read and validate ``farm.toml``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: farm file not found")
    return parse_farm(read_toml(path), str(path), path.parent.resolve())


def _check_registry(config: FarmConfig, where: str) -> None:
    """Targets must be known profiles and recipes known recipes (before hours of benchmarking start)."""
    from edgepack.compress.recipe import load_recipes
    from edgepack.targets.registry import load_registry

    registry, recipes = load_registry(), load_recipes()
    for target in config.targets:
        try:
            registry.get(target.id)
            for recipe in target.recipes:
                recipes.get(recipe)
        except EdgepackError as exc:
            raise InputError(f"{where}: targets '{target.id}': {exc}") from None
