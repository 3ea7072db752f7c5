"""The toolchain report: per registered runtime, its packages and versions, how its converter runs, the vendor
tools it uses when present, and the shipped targets on it; plus the host facts that change speed (ISA) or
whether an export can run at all (disk, cache, offline switch)."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgepack.exporters.base import IsolatedEnv, Toolchain
from edgepack.exporters.registry import exporter_classes
from edgepack.targets.registry import Registry
from edgepack.toolchains.isolated import installed_versions

ISA_FLAGS = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI (int8 dot products)",
    "avx_vnni": "AVX-VNNI (int8 dot products)",
    "avx512_bf16": "AVX-512 BF16",
    "amx_tile": "AMX tiles",
    "amx_int8": "AMX int8",
    "asimddp": "Arm dot product (int8)",
    "i8mm": "Arm int8 matrix multiply",
    "sve": "Arm SVE",
}
"""``/proc/cpuinfo`` flags that decide which int8/bf16 kernels the host runtimes pick (so host timings)."""

MIN_FREE_GB = 5.0
"""Free disk below which an export of a large model with several targets may not fit (artifacts, caches)."""


@dataclass(frozen=True)
class RuntimeStatus:
    """One registered runtime on this machine."""

    runtime: str
    isolation: str
    versions: dict[str, str]
    missing: dict[str, str]
    tools: dict[str, str | None]
    """Optional vendor tool -> its path here (``None``: not installed)."""
    tool_notes: dict[str, str]
    targets: list[str]
    isolated: dict[str, str] | None = None
    """Versions in the runtime's own venv (``isolation = "own venv"``); ``None`` when it has none or it is not
    installed (then :attr:`missing` names the install command)."""

    @property
    def ready(self) -> bool:
        return not self.missing


@dataclass(frozen=True)
class HostFacts:
    system: str
    machine: str
    cpu: str
    cores: int
    isa: list[str]
    python: str
    free_disk_gb: float | None
    cache_dir: str | None
    offline: bool


@dataclass(frozen=True)
class Doctor:
    host: HostFacts
    runtimes: list[RuntimeStatus]
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"host": asdict(self.host), "runtimes": [asdict(r) | {"ready": r.ready} for r in self.runtimes],
                "problems": list(self.problems), "notes": list(self.notes)}


def runtime_statuses(registry: Registry) -> list[RuntimeStatus]:
    """Every registered runtime, with what is installed here (nothing is imported but package metadata)."""
    out = []
    for runtime, cls in sorted(exporter_classes().items()):
        toolchain = Toolchain.of(*cls.distributions)
        caps = cls.capabilities
        missing = dict(toolchain.missing)
        isolated = _pinned_versions(caps.isolated_env) if caps.isolated_env is not None else None
        if caps.isolated_env is not None and isolated is None:
            missing[f"{caps.isolated_env.name} environment"] = f"edgepack toolchains install {caps.isolated_env.name}"
        out.append(RuntimeStatus(
            runtime=runtime,
            isolation=caps.isolation,
            versions=dict(toolchain.versions),
            missing=missing,
            isolated=isolated,
            tools={tool: shutil.which(tool) for tool, _ in caps.optional_tools},
            tool_notes=dict(caps.optional_tools),
            targets=sorted(p.id for p in registry if p.runtime == runtime),
        ))
    return out


def _pinned_versions(env: IsolatedEnv) -> dict[str, str] | None:
    """Installed versions of the venv's own requirements (not their dependencies), or ``None``."""
    from packaging.requirements import Requirement

    installed = installed_versions(env)
    if installed is None:
        return None
    names = [Requirement(spec).name.lower().replace("_", "-") for spec in (*env.requirements, *env.without_dependencies)]
    return {name: installed.get(name, "?") for name in names}


def parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """``(CPU model, feature flags)`` from ``/proc/cpuinfo`` text (x86 ``flags``, Arm ``Features``)."""
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model or platform.machine(), flags


def host_facts() -> HostFacts:
    from edgepack.export_cache import default_cache_dir

    try:
        model, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        model, flags = platform.processor() or platform.machine(), set()
    cache = default_cache_dir()
    probe = cache if cache is not None and cache.exists() else Path.home()
    try:
        free = round(shutil.disk_usage(probe).free / 1e9, 1)
    except OSError:
        free = None
    return HostFacts(
        system=platform.system(), machine=platform.machine(), cpu=model, cores=os.cpu_count() or 1,
        isa=[label for flag, label in ISA_FLAGS.items() if flag in flags],
        python=platform.python_version(), free_disk_gb=free,
        cache_dir=str(cache) if cache is not None else None,
        offline=os.environ.get("EDGEPACK_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"},
    )


def doctor(registry: Registry) -> Doctor:
    """Host facts and runtime statuses, with the problems that stop an export and notes that change results."""
    host = host_facts()
    runtimes = runtime_statuses(registry)
    problems = [f"{r.runtime}: missing {', '.join(r.missing)} (install: {'; '.join(r.missing.values())}); "
                f"targets {', '.join(r.targets) or 'none'} cannot export" for r in runtimes if r.missing]
    if host.free_disk_gb is not None and host.free_disk_gb < MIN_FREE_GB:
        problems.append(f"only {host.free_disk_gb} GB free on the disk of the cache/home folder "
                        f"(exports of large models need several GB)")
    if sys.version_info < (3, 10):
        problems.append(f"Python {host.python}: edgepack needs 3.10 or newer")
    notes = []
    if host.machine in ("x86_64", "AMD64") and not any("int8" in label for label in host.isa):
        notes.append("no int8 dot-product instructions (VNNI/AMX): host int8 timings understate what int8 gains "
                     "on a device with them; compare speeds only as ratios measured on one machine")
    for status in runtimes:
        for tool, path in status.tools.items():
            if path is None:
                notes.append(f"{status.runtime}: {tool} not on PATH; it {status.tool_notes[tool]}")
    return Doctor(host, runtimes, problems, notes)
