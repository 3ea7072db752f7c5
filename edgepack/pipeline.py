"""One target's flow (DESIGN.md §2): walk the recipe chain, export, run, check parity and the gate.

The first recipe whose artifact passes parity and the gate wins; every attempt is recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgepack.compress.gate import Gate, GateResult
from edgepack.compress.recipe import RecipeBook
from edgepack.data.dataset import Dataset
from edgepack.errors import EdgepackError
from edgepack.exporters.base import Artifact, Exporter, NotRunnable, Predictor
from edgepack.exporters.registry import get_exporter
from edgepack.models.source import ModelSource
from edgepack.parity import ParityReport, compare
from edgepack.targets.schema import TargetProfile

Status = Literal["ok", "failed", "unsupported"]
ProgressFn = Callable[[str, str], None]


@dataclass
class Attempt:
    """One recipe tried for one target."""

    recipe: str
    status: Literal["passed", "rejected", "error", "skipped"]
    reason: str
    seconds: float = 0.0
    converter: str | None = None
    parity: ParityReport | None = None
    gate: GateResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "status": self.status,
            "reason": self.reason,
            "seconds": round(self.seconds, 3),
            "converter": self.converter,
            "parity": None if self.parity is None else self.parity.to_dict(),
            "gate": None if self.gate is None else self.gate.to_dict(),
        }


@dataclass
class TargetResult:
    """Outcome for one target: the winning artifact (if any) and every attempt."""

    profile: TargetProfile
    status: Status
    attempts: list[Attempt] = field(default_factory=list)
    artifact: Artifact | None = None
    error: str | None = None
    runnable: str = "yes"
    """``yes``, or the reason the artifact could not be run on this host."""

    @property
    def winner(self) -> Attempt | None:
        return next((a for a in self.attempts if a.status == "passed"), None)


@dataclass
class Evaluation:
    """What every target is checked on: parity inputs, the gate, and the reference predictor."""

    reference: Predictor
    parity_inputs: Dataset
    gate: Gate
    _reference_logits: np.ndarray | None = None

    def reference_logits(self) -> np.ndarray:
        if self._reference_logits is None:
            self._reference_logits = self.gate.reference_logits(self.reference)
        return self._reference_logits


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, EdgepackError):
        return str(exc)
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check(artifact: Artifact, predictor: Predictor, evaluation: Evaluation, recipe_parity: Any) -> tuple[ParityReport, GateResult]:
    parity = compare(evaluation.reference, predictor, evaluation.parity_inputs.batches(), recipe_parity)
    gate = evaluation.gate.evaluate(evaluation.reference, predictor, evaluation.reference_logits())
    return parity, gate


def run_target(
    source: ModelSource,
    profile: TargetProfile,
    recipes: RecipeBook,
    calib: Dataset | None,
    evaluation: Evaluation,
    workdir: Path,
    progress: ProgressFn = lambda target, stage: None,
) -> TargetResult:
    """Export ``source`` for ``profile`` down its recipe chain; never raises for per-target failures."""
    try:
        exporter: Exporter = get_exporter(profile.runtime)
    except EdgepackError as exc:
        return TargetResult(profile, "unsupported", error=str(exc))
    missing = exporter.toolchain().missing
    if missing:
        hints = "; ".join(missing.values())
        return TargetResult(profile, "failed", error=f"toolchain for '{profile.runtime}' is missing: {hints}")
    result = TargetResult(profile, "failed")
    for name in profile.recipes:
        recipe = recipes.get(name)
        reason = exporter.supports(recipe)
        if reason is not None:
            result.attempts.append(Attempt(name, "skipped", reason))
            continue
        started = time.perf_counter()
        attempt = Attempt(name, "error", "")
        result.attempts.append(attempt)
        try:
            progress(profile.id, f"exporting {name}")
            artifact = exporter.export(source, profile, recipe, calib, workdir / name)
            attempt.converter = artifact.converter
            predictor = exporter.predictor(artifact, source)
            if isinstance(predictor, NotRunnable):
                attempt.status, attempt.reason = "passed", f"exported; not runnable here: {predictor.reason}"
                result.artifact, result.runnable = artifact, predictor.reason
                break
            progress(profile.id, f"checking {name}")
            try:
                attempt.parity, attempt.gate = _check(artifact, predictor, evaluation, recipe.parity)
            finally:
                predictor.close()
            if not attempt.parity.passed:
                attempt.status, attempt.reason = "rejected", f"parity: {attempt.parity.reason}"
            elif not attempt.gate.passed:
                attempt.status, attempt.reason = "rejected", f"gate: {attempt.gate.reason}"
            else:
                attempt.status, attempt.reason = "passed", "parity and gate passed"
                result.artifact = artifact
                break
        except Exception as exc:  # noqa: BLE001 - one target's failure must not stop the others
            attempt.status, attempt.reason = "error", _one_line(exc)
        finally:
            attempt.seconds = time.perf_counter() - started
    if result.artifact is not None:
        result.status = "ok"
    else:
        tried = [a for a in result.attempts if a.status != "skipped"] or result.attempts
        result.error = "; ".join(f"{a.recipe}: {a.reason}" for a in tried) or "no recipe to try"
    return result
