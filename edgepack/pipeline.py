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

from edgepack.compress.gate import Gate, GateResult, with_latency
from edgepack.compress.passes import PassContext, apply_passes
from edgepack.compress.recipe import Recipe, RecipeBook
from edgepack.device_bench.compare import LatencyComparison, compare_latency
from edgepack.data.dataset import Dataset
from edgepack.errors import EdgepackError
from edgepack.exporters.base import Artifact, Exporter, NotRunnable, Predictor
from edgepack.exporters.registry import get_exporter
from edgepack.models.reference import reference_predictor
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
    latency: LatencyComparison | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "status": self.status,
            "reason": self.reason,
            "seconds": round(self.seconds, 3),
            "converter": self.converter,
            "parity": None if self.parity is None else self.parity.to_dict(),
            "gate": None if self.gate is None else self.gate.to_dict(),
            "latency_vs_fp32": None if self.latency is None else self.latency.to_dict(),
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


class _Fp32Baseline:
    """The same runtime's fp32 artifact, exported once per target, to time compressed artifacts against."""

    def __init__(self, exporter: Exporter, source: ModelSource, profile: TargetProfile, recipes: RecipeBook, workdir: Path) -> None:
        self._args = (exporter, source, profile, recipes, workdir)
        self._predictor: Predictor | NotRunnable | None = None

    def predictor(self) -> Predictor | None:
        if self._predictor is None:
            exporter, source, profile, recipes, workdir = self._args
            try:
                artifact = exporter.export(source, profile, recipes.get("fp32"), None, workdir / "_fp32_baseline")
                self._predictor = exporter.predictor(artifact, source)
            except Exception as exc:  # noqa: BLE001 - no baseline means latency is not measurable, not a failure
                self._predictor = NotRunnable(f"fp32 baseline could not be built: {_one_line(exc)}")
        return self._predictor if isinstance(self._predictor, Predictor) else None

    def close(self) -> None:
        if isinstance(self._predictor, Predictor):
            self._predictor.close()


def _check(
    attempt: Attempt, recipe: Recipe, predictor: Predictor, evaluation: Evaluation, parity_reference: Predictor,
    baseline: _Fp32Baseline,
) -> None:
    attempt.parity = compare(parity_reference, predictor, evaluation.parity_inputs.batches(), recipe.parity)
    attempt.gate = evaluation.gate.evaluate(evaluation.reference, predictor, evaluation.reference_logits())
    if recipe.precision == "fp32" and not recipe.passes:
        return
    fp32 = baseline.predictor()
    if fp32 is not None:
        attempt.latency = compare_latency(fp32, predictor, evaluation.parity_inputs.batch(0))
        attempt.gate = with_latency(attempt.gate, attempt.latency.speedup, evaluation.gate.latency_tolerance)


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
    baseline = _Fp32Baseline(exporter, source, profile, recipes, workdir)
    try:
        _walk_chain(result, exporter, source, recipes, calib, evaluation, workdir, baseline, progress)
    finally:
        baseline.close()
    if result.artifact is not None:
        result.status = "ok"
    else:
        tried = [a for a in result.attempts if a.status != "skipped"] or result.attempts
        result.error = "; ".join(f"{a.recipe}: {a.reason}" for a in tried) or "no recipe to try"
    return result


def _walk_chain(
    result: TargetResult, exporter: Exporter, source: ModelSource, recipes: RecipeBook, calib: Dataset | None,
    evaluation: Evaluation, workdir: Path, baseline: _Fp32Baseline, progress: ProgressFn,
) -> None:
    profile = result.profile
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
            compressed = source
            if recipe.passes:
                progress(profile.id, f"compressing {name}")
                compressed = apply_passes(source, recipe.passes, PassContext(calib=calib))
            progress(profile.id, f"exporting {name}")
            artifact = exporter.export(compressed, profile, recipe, calib, workdir / name)
            attempt.converter = artifact.converter
            predictor = exporter.predictor(artifact, compressed)
            if isinstance(predictor, NotRunnable):
                attempt.status, attempt.reason = "passed", f"exported; not runnable here: {predictor.reason}"
                result.artifact, result.runnable = artifact, predictor.reason
                break
            progress(profile.id, f"checking {name}")
            parity_reference = evaluation.reference if compressed is source else reference_predictor(compressed)
            try:
                _check(attempt, recipe, predictor, evaluation, parity_reference, baseline)
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
