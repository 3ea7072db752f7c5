"""Device facts the generated code needs, as data: which LiteRT delegate runs each accelerator of a
profile, and which Core ML compute units select it. Unknown accelerators fall back to the CPU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class KotlinDelegate:
    """How the generated Kotlin runner creates one LiteRT delegate (Interpreter API)."""

    name: str
    imports: tuple[str, ...]
    create: str
    """A Kotlin expression of type ``org.tensorflow.lite.Delegate``."""
    gradle: tuple[str, ...] = ()
    """Extra Maven artifacts (``group:name``) beside ``com.google.ai.edge.litert:litert``; pinned to the
    same version."""


LITERT_DELEGATES: dict[str, KotlinDelegate] = {
    "gpu": KotlinDelegate(
        "gpu", ("org.tensorflow.lite.gpu.GpuDelegate",), "GpuDelegate()", ("com.google.ai.edge.litert:litert-gpu",)
    ),
    "nnapi": KotlinDelegate("nnapi", ("org.tensorflow.lite.nnapi.NnApiDelegate",), "NnApiDelegate()"),
}
"""Keyed by the profile's accelerator name. Accelerators without an entry (e.g. ``htp``, whose QNN
delegate ships outside Google Maven) run on the CPU path (XNNPACK) and say so in the generated code."""

COREML_COMPUTE_UNITS: dict[str, str] = {
    "ane": ".cpuAndNeuralEngine",
    "gpu": ".cpuAndGPU",
    "cpu": ".cpuOnly",
}
"""Keyed by the profile's accelerator name; ``.all`` when the placement report names none."""

FULL_COVERAGE = 0.0
"""An accelerator is recommended only when the placement report leaves no op on the CPU: a partly
delegated graph pays a copy at every boundary and is often slower than XNNPACK alone."""


def recommended_accelerator(placement: Mapping[str, Any] | None) -> str | None:
    """The first non-CPU accelerator of the placement report that runs every op, else ``None`` (CPU)."""
    if not placement:
        return None
    for entry in placement.get("accelerators", ()):
        if entry.get("kind") == "cpu":
            continue
        if entry.get("fallback_fraction") == FULL_COVERAGE and entry.get("supported", 0) > 0:
            return str(entry["accelerator"])
    return None
