"""Runtime-independent quantization settings, derived once from a recipe and the calibration data.

Each exporter adapts a :class:`QuantizationPlan` to its runtime's own quantizer (ONNX Runtime,
NNCF, the LiteRT converter), so recipes, exclusions and the gate behave the same everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from edgepack.compress.recipe import Recipe
from edgepack.data.dataset import Dataset
from edgepack.errors import DataError

STATIC_PRECISIONS = ("int8",)


@dataclass(frozen=True)
class QuantizationPlan:
    """What to quantize and with which data: the recipe's settings plus the calibration samples."""

    recipe: Recipe
    calib: Dataset | None

    @property
    def static(self) -> bool:
        return self.recipe.precision in STATIC_PRECISIONS

    @property
    def needs_calibration(self) -> bool:
        """Static activation ranges and activation-aware weight scaling both need real data."""
        awq = self.recipe.precision == "int4-weight" and self.recipe.weight_only.method == "awq"
        return self.static or awq

    @property
    def exclude(self) -> tuple[str, ...]:
        return tuple(self.recipe.exclude)

    def calibration_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """Up to ``recipe.calibration.samples`` batches of one sample each."""
        if self.calib is None:
            raise DataError("static int8 needs calibration data", hint="pass --calib DATA (.npz/.npy)")
        yield from self.calib.batches(limit=self.recipe.calibration.samples)


def plan(recipe: Recipe, calib: Dataset | None) -> QuantizationPlan:
    """Check that a recipe can run with the given data and return its plan."""
    result = QuantizationPlan(recipe, calib)
    if result.needs_calibration and calib is None:
        raise DataError(f"recipe '{recipe.name}' needs calibration data", hint="pass --calib DATA (.npz/.npy)")
    return result


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The host CPU's feature flags (empty where /proc/cpuinfo is unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def has_vnni() -> bool:
    """True when the CPU has int8 dot-product instructions (AVX512-VNNI or AVX-VNNI)."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})
