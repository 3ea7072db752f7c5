"""The search space: recipe variants a target's profile and exporter allow, in a deterministic order.

A :class:`Candidate` is a shipped base recipe (``int8``, ``fp32``, ...) plus a few changed fields, an optional
torch-level pass, and for int8 the number of most sensitive layers kept in float. Which precisions are in the
space comes from the profile (its accelerators' precisions and the recipes it names); which variants survive
is decided by :meth:`edgepack.exporters.base.Exporter.supports`. The knob values are data (:data:`KNOBS`,
:data:`PASS_CHOICES`, :data:`EXCLUDE_TOP`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgepack.compress.recipe import PassSpec, Recipe, RecipeBook
from edgepack.exporters.base import Exporter
from edgepack.targets.schema import TargetProfile

BASE_RECIPES: dict[str, str] = {
    "fp32": "fp32",
    "fp16": "fp16",
    "int8": "int8",
    "int8-dynamic": "int8-dynamic",
    "int4-weight": "int4-weight",
}
"""Recipe precision -> the shipped recipe its variants start from."""

PROFILE_PRECISIONS: dict[str, str] = {
    "fp32": "fp32",
    "fp16": "fp16",
    "int8": "int8",
    "int8-dynamic": "int8-dynamic",
    "int4": "int4-weight",
}
"""Profile (accelerator) precision -> the recipe precision that produces it."""

KNOBS: dict[str, dict[str, tuple[Any, ...]]] = {
    "int8": {
        "calibration.method": ("minmax", "percentile", "entropy"),
        "quantization.per_channel": (True, False),
        "quantization.symmetric_activations": (False, True),
    },
    "int8-dynamic": {"quantization.per_channel": (True, False)},
    "int4-weight": {
        "weight_only.group_size": (128, 32),
        "weight_only.ratio": (1.0, 0.5),
        "weight_only.method": ("rtn", "awq"),
    },
}
"""Per precision: field (dotted path in the recipe) -> values, the base recipe's usual value first."""

PASS_CHOICES: tuple[tuple[PassSpec, ...], ...] = (
    (),
    (PassSpec(name="magnitude_prune", options={"sparsity": 0.25, "scope": "global"}),),
    (PassSpec(name="magnitude_prune", options={"sparsity": 0.5, "scope": "global"}),),
    (PassSpec(name="semi_structured_24"),),
    (PassSpec(name="palettize", options={"bits": 6, "granularity": "per_tensor"}),),
    (PassSpec(name="palettize", options={"bits": 4, "granularity": "per_tensor"}),),
)
"""Torch-level passes tried before export (pruning sparsity, 2:4, clustering bits); only for torch sources."""

EXCLUDE_TOP: tuple[int, ...] = (0, 1, 2, 4)
"""int8: keep this many of the most sensitive layers (sensitivity ranking) in float."""


@dataclass(frozen=True)
class Candidate:
    """One point of the space: a base recipe, changed fields, passes, and int8 float exclusions."""

    base: str
    changes: tuple[tuple[str, Any], ...] = ()
    passes: tuple[PassSpec, ...] = ()
    exclude_top: int = 0

    @property
    def distance(self) -> int:
        """How far from the shipped base recipe (changed knobs, passes, exclusions): simple first."""
        return len(self.changes) + len(self.passes) + (1 if self.exclude_top else 0)

    @property
    def spec_key(self) -> str:
        """Identity before the sensitivity ranking is known (layer names are resolved later)."""
        data = {"base": self.base, "changes": list(self.changes), "passes": [p.model_dump() for p in self.passes],
                "exclude_top": self.exclude_top}
        return json.dumps(data, sort_keys=True, default=str)

    @property
    def label(self) -> str:
        """Short human-readable description, e.g. ``int8 per_channel=False +prune0.5 float-top2``."""
        parts = [self.base]
        parts += [f"{path.split('.')[-1]}={value}" for path, value in self.changes]
        parts += [_pass_label(p) for p in self.passes]
        if self.exclude_top:
            parts.append(f"float-top{self.exclude_top}")
        return " ".join(parts)

    def recipe(self, book: RecipeBook, ranking: Sequence[str] = ()) -> Recipe:
        """The concrete recipe; ``ranking`` is the sensitive layers, most sensitive first."""
        base = book.get(BASE_RECIPES[self.base])
        data = base.model_dump()
        for path, value in self.changes:
            section, _, field = path.partition(".")
            data[section] = {**data[section], field: value}
        data["passes"] = [p.model_dump() for p in (*base.passes, *self.passes)]
        data["exclude"] = list(ranking[: self.exclude_top]) if self.exclude_top else list(base.exclude)
        data["description"] = f"edgepack search variant of '{base.name}': {self.label}."
        data["name"] = "search-" + recipe_digest(Recipe.model_validate(data))[:12]
        return Recipe.model_validate(data)


def _pass_label(spec: PassSpec) -> str:
    options = spec.options
    if spec.name == "magnitude_prune":
        return f"+prune{options.get('sparsity')}"
    if spec.name == "semi_structured_24":
        return "+2:4"
    if spec.name == "palettize":
        return f"+cluster{options.get('bits')}b"
    return f"+{spec.name}"


def recipe_digest(recipe: Recipe) -> str:
    """Content hash of what a recipe *does* (name and description excluded): identical candidates share it."""
    data = recipe.model_dump(exclude={"name", "description"})
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def space_precisions(profile: TargetProfile, book: RecipeBook) -> list[str]:
    """Recipe precisions the profile's device runs or its recipe chain names, in a stable order."""
    wanted = {PROFILE_PRECISIONS[p] for p in profile.precisions if p in PROFILE_PRECISIONS}
    for name in profile.recipes:
        if name in book:
            precision = book.get(name).precision
            wanted.add("int8" if precision == "mixed" else precision)
    return [p for p in BASE_RECIPES if p in wanted]


def search_space(
    profile: TargetProfile, exporter: Exporter, book: RecipeBook, *, torch_source: bool, sensitivity: bool = True
) -> list[Candidate]:
    """Every candidate the exporter accepts, bases first. ``torch_source`` enables torch-level passes;
    ``sensitivity`` enables int8 float-exclusion sets."""
    candidates: list[Candidate] = []
    for precision in space_precisions(profile, book):
        if BASE_RECIPES[precision] not in book:
            continue
        knobs = KNOBS.get(precision, {})
        grids = [[(path, v) for v in values] for path, values in knobs.items()]
        excludes = EXCLUDE_TOP if precision == "int8" and sensitivity else (0,)
        passes = PASS_CHOICES if torch_source else ((),)
        for settings in itertools.product(*grids) if grids else [()]:
            base = book.get(BASE_RECIPES[precision])
            changes = tuple((p, v) for p, v in settings if _current(base, p) != v)
            probe = Candidate(precision, changes).recipe(book)
            if exporter.refusal(probe) is not None:
                continue
            for extra, top in itertools.product(passes, excludes):
                candidate = Candidate(precision, changes, extra, top)
                if extra and exporter.refusal(candidate.recipe(book)) is not None:
                    continue  # e.g. palettization on a runtime that stores plain weights
                candidates.append(candidate)
    return candidates


def _current(recipe: Recipe, path: str) -> Any:
    section, _, field = path.partition(".")
    return getattr(getattr(recipe, section), field)


def ordered(candidates: Sequence[Candidate], seed: int) -> list[Candidate]:
    """Breadth first and deterministic: by distance from the base recipe, precisions interleaved round-robin,
    shuffled with ``seed`` within one (distance, precision) group."""
    rng = random.Random(seed)
    by_group: dict[tuple[int, str], list[Candidate]] = {}
    for candidate in candidates:
        by_group.setdefault((candidate.distance, candidate.base), []).append(candidate)
    result: list[Candidate] = []
    for distance in sorted({d for d, _ in by_group}):
        lanes = []
        for base in BASE_RECIPES:
            group = sorted(by_group.get((distance, base), []), key=lambda c: c.spec_key)
            rng.shuffle(group)
            lanes.append(group)
        for row in itertools.zip_longest(*lanes):
            result.extend(c for c in row if c is not None)
    return result
