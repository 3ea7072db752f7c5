"""Recipes: named, data-defined compression settings (``edgepack/compress/recipes/<name>.toml``).

A recipe says *what* to do (precision, passes, calibration, exclusions, parity tolerances); each
exporter adapts it to its runtime's own quantizer. Unknown keys are rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edgepack._schema import StrictModel
from edgepack._toml import read_toml, validate
from edgepack.errors import ProfileError

RECIPES_DIR = Path(__file__).with_name("recipes")

RecipePrecision = Literal["fp32", "fp16", "int8", "int8-dynamic", "int4-weight", "mixed"]


class PassSpec(StrictModel):
    """One torch-level compression pass and its options."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class Calibration(StrictModel):
    """How activation ranges are calibrated for static quantization."""

    method: Literal["minmax", "percentile", "entropy", "mse"] = "minmax"
    """minmax and percentile on every runtime; entropy (KL) where the runtime offers it (ONNX Runtime); mse
    (the range minimising quantization error: :mod:`edgepack.compress.calibration` for ONNX Runtime,
    NNCF's histogram estimator for OpenVINO)."""
    samples: int = Field(default=128, ge=1)
    percentile: float = Field(default=99.99, gt=0, le=100)


class Quantization(StrictModel):
    """How integer quantization is laid out (ignored by float recipes)."""

    per_channel: bool = True
    """Per-output-channel weight scales (per-tensor when false)."""
    symmetric_activations: bool = False
    """Symmetric (zero point 0) activation ranges, as TensorRT and some NPUs require."""
    activations: Literal["int8", "int16"] = "int8"
    io: Literal["float", "int8", "uint8"] = "float"
    """Model input/output dtype: float keeps the graph I/O float; int8/uint8 for accelerators that need it."""


class WeightOnly(StrictModel):
    """Group-wise low-bit weight-only quantization of Linear/MatMul weights (activations stay float)."""

    bits: Literal[4, 8] = 4
    group_size: int = Field(default=128, ge=16)
    symmetric: bool = False
    method: Literal["rtn", "awq"] = "rtn"
    """Round-to-nearest, or activation-aware scaling (needs calibration data)."""
    ratio: float = Field(default=1.0, gt=0, le=1)
    """Fraction of weight layers stored in ``bits``; the rest (the most error-sensitive) stay int8."""


class MixedPrecision(StrictModel):
    """Sensitivity-driven mixed precision: keep the fewest most sensitive layers in float."""

    max_float_layers: int = Field(default=8, ge=1)
    sensitivity_samples: int = Field(default=200, ge=1)
    """Evaluation samples used to rank layers (the full gate still runs on every candidate)."""
    max_layers_ranked: int = Field(default=64, ge=1)
    """Rank at most this many quantizable layers (the first ones in graph order)."""


class ParityTolerance(StrictModel):
    """How close an artifact's outputs must be to the source model's on held-out inputs.

    ``max_rel_error`` is the largest absolute difference divided by the largest absolute reference
    value (scale-free); ``min_cosine`` is the mean per-sample cosine similarity.
    """

    max_rel_error: float = Field(default=1e-3, gt=0)
    min_cosine: float = Field(default=0.9999, ge=-1, le=1)
    min_top1_agreement: float | None = Field(default=None, ge=0, le=1)


class Recipe(StrictModel):
    """A named compression recipe."""

    name: str
    description: str = ""
    precision: RecipePrecision
    passes: list[PassSpec] = Field(default_factory=list)
    calibration: Calibration = Field(default_factory=Calibration)
    quantization: Quantization = Field(default_factory=Quantization)
    mixed: MixedPrecision = Field(default_factory=MixedPrecision)
    weight_only: WeightOnly = Field(default_factory=WeightOnly)
    exclude: list[str] = Field(default_factory=list)
    """Layer/node names kept in float (mixed precision)."""
    parity: ParityTolerance = Field(default_factory=ParityTolerance)


@dataclass(frozen=True)
class RecipeBook:
    """All known recipes by name."""

    recipes: dict[str, Recipe]

    def get(self, name: str) -> Recipe:
        try:
            return self.recipes[name]
        except KeyError:
            raise ProfileError(f"unknown recipe '{name}'", hint=f"known: {', '.join(sorted(self.recipes))}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.recipes


def load_recipe_file(path: Path) -> Recipe:
    """Load one recipe file, raising :class:`ProfileError` naming file and field."""
    recipe = validate(Recipe, read_toml(path), path)
    return recipe


def load_recipes(directory: Path | None = None) -> RecipeBook:
    """Load every recipe in ``directory`` (default: the shipped recipes)."""
    directory = directory or RECIPES_DIR
    recipes: dict[str, Recipe] = {}
    for path in sorted(directory.glob("*.toml")):
        recipe = load_recipe_file(path)
        if recipe.name != path.stem:
            raise ProfileError(f"{path}: name: {recipe.name!r} must match the file name {path.stem!r}")
        recipes[recipe.name] = recipe
    return RecipeBook(recipes)
