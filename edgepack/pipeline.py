"""One target's flow: walk the recipe chain, export, run, check parity and the gate.

The first recipe whose artifact passes parity and the gate wins; every attempt is recorded.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgepack._text import first_line
from edgepack.compress.gate import Gate, GateResult, with_latency
from edgepack.compress.catalog import apply_passes
from edgepack.compress.passes import PassContext
from edgepack.compress.quantize import QuantizationPlan
from edgepack.compress.recipe import Recipe, RecipeBook
from edgepack.compress.sensitivity import LayerSensitivity, exclusion_candidates, quantizable_layers, rank_layers
from edgepack.device_bench.compare import LatencyComparison, compare_latency
from edgepack.data.dataset import Dataset
from edgepack.errors import EdgepackError, UnsupportedError, environment_failure
from edgepack.exporters.base import Artifact, Exporter, NotRunnable, Predictor
from edgepack.exporters.onnx.hub import export_onnx
from edgepack.exporters.registry import get_exporter
from edgepack.models.reference import reference_predictor
from edgepack.models.source import ModelSource
from edgepack.models.synthetic import calibration_refusal
from edgepack.parity import ParityReport, compare
from edgepack.postprocess import float_nodes, postprocess_settings
from edgepack.session import ExportSession, StageTimer, export_settings_key
from edgepack.signals import raise_if_interrupted
from edgepack.targets.placement import placement_for
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
    excluded: list[str] = field(default_factory=list)
    """Layers kept in float (mixed precision)."""

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
            "excluded_layers": self.excluded,
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
    sensitivity: list[dict[str, object]] | None = None
    """Per-layer sensitivity ranking, when a mixed-precision recipe was tried."""
    placement: dict[str, object] | None = None
    """Static per-accelerator placement of the shipped artifact (profiles with op tables only)."""
    divergence: dict[str, object] | None = None
    """Where the last artifact that failed parity first differed from its source (:mod:`edgepack.divergence`)."""
    timings: dict[str, float] | None = None
    """Seconds per stage (:data:`edgepack.session.STAGES`) and ``total`` for this target."""

    @property
    def winner(self) -> Attempt | None:
        return next((a for a in reversed(self.attempts) if a.status == "passed"), None)


@dataclass
class Evaluation:
    """What every target is checked on: parity inputs, the gate, and the reference predictor."""

    reference: Predictor
    parity_inputs: Dataset
    gate: Gate
    _reference_logits: np.ndarray | None = None
    _conversion_gate: tuple[Gate, np.ndarray] | None = None

    def reference_logits(self, reference: Predictor | None = None) -> np.ndarray:
        """The reference's outputs on the gate data, computed once (``reference``: the same model, e.g. with
        its outputs memoised by :meth:`ExportSession.reference`)."""
        if self._reference_logits is None:
            self._reference_logits = self.gate.reference_logits(reference or self.reference)
        return self._reference_logits

    def gate_for(self, recipe: Recipe, reference: Predictor | None = None) -> tuple[Gate, np.ndarray, str | None]:
        """The gate an attempt with ``recipe`` is judged by, its reference outputs, and a note on the choice.

        A plain fp32 conversion (no passes) under a fidelity gate is judged on the parity inputs: it compresses
        nothing, parity (at fp32's tight tolerance) is its check, and the large fidelity set that resolves a
        compression's drop would only multiply the cost by the model's size. Labelled data and user metrics
        always use the full gate."""
        fidelity = self.gate.data.labels is None and self.gate.scorer is None
        if not (fidelity and recipe.precision == "fp32" and not recipe.passes):
            return self.gate, self.reference_logits(reference), None
        if self._conversion_gate is None:
            gate = replace(self.gate, data=self.parity_inputs)
            self._conversion_gate = (gate, gate.reference_logits(reference or self.reference))
        gate, logits = self._conversion_gate
        return gate, logits, "fp32 conversion: fidelity measured on the parity inputs (parity is the conversion check)"


def _raise_if_fatal(exc: BaseException, target: str) -> None:
    """Re-raise what must stop the whole export instead of failing one attempt: SIGINT/SIGTERM (even when
    a toolchain rewrapped it) and environmental faults (disk full, I/O error, permissions), which say
    nothing about the model and must not be recorded as a recipe's failure."""
    raise_if_interrupted()
    failure = environment_failure(exc, f"exporting target '{target}'")
    if failure is not exc:
        raise failure from None


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, EdgepackError):
        return str(exc)
    return first_line(exc, typed=True)


class _Fp32Baseline:
    """The same runtime's fp32 artifact, to time compressed artifacts against: built on first use, shared by
    every target of the export with the same runtime and export settings (:class:`ExportSession`)."""

    def __init__(
        self, exporter: Exporter, source: ModelSource, profile: TargetProfile, recipes: RecipeBook, workdir: Path,
        calib: Dataset | None,
    ) -> None:
        self._args = (exporter, source, profile, recipes, workdir, calib)
        self._predictor: Predictor | NotRunnable | None = None

    def predictor(self) -> Predictor | None:
        if self._predictor is None:
            exporter, source, profile, recipes, workdir, calib = self._args
            try:
                # calib lets a converter reuse the fp32 file of a run it already made (onnx2tf writes all variants)
                artifact = exporter.export(source, profile, recipes.get("fp32"), calib, workdir / "_fp32_baseline")
                self._predictor = exporter.predictor(artifact, source)
            except Exception as exc:  # noqa: BLE001 - no baseline means latency is not measurable, not a failure
                _raise_if_fatal(exc, profile.id)
                self._predictor = NotRunnable(f"fp32 baseline could not be built: {_one_line(exc)}")
        return self._predictor if isinstance(self._predictor, Predictor) else None

    def close(self) -> None:
        if isinstance(self._predictor, Predictor):
            self._predictor.close()


def _check(
    attempt: Attempt, recipe: Recipe, predictor: Predictor, evaluation: Evaluation, parity_reference: Predictor,
    baseline: _Fp32Baseline, enforce_latency: bool, timer: StageTimer, source_reference: Predictor,
) -> None:
    with timer.stage("parity"):
        attempt.parity = compare(parity_reference, predictor, evaluation.parity_inputs.batches(), recipe.parity)
    with timer.stage("gate"):
        gate, reference_logits, note = evaluation.gate_for(recipe, source_reference)
        attempt.gate = gate.evaluate(evaluation.reference, predictor, reference_logits)
        if note is not None:
            attempt.gate = replace(attempt.gate, note=note)
    if (recipe.precision == "fp32" and not recipe.passes) or predictor.proxy_for:
        return  # a proxy's speed says nothing about the device
    with timer.stage("latency_check"):
        fp32 = baseline.predictor()
        if fp32 is not None:
            attempt.latency = compare_latency(fp32, predictor, evaluation.parity_inputs.batch(0))
            attempt.gate = with_latency(attempt.gate, attempt.latency.speedup, evaluation.gate.latency_tolerance,
                                        enforce=enforce_latency)


def run_target(
    source: ModelSource,
    profile: TargetProfile,
    recipes: RecipeBook,
    calib: Dataset | None,
    evaluation: Evaluation,
    workdir: Path,
    progress: ProgressFn = lambda target, stage: None,
    training: PassContext | None = None,
    session: ExportSession | None = None,
) -> TargetResult:
    """Export ``source`` for ``profile`` down its recipe chain; never raises for per-target failures.

    ``session`` carries what the targets of one export share (fp32 baselines, sensitivity rankings, reference
    outputs); without one, this target gets its own."""
    timer = StageTimer()
    with timer.stage("load"):
        try:
            exporter: Exporter = get_exporter(profile.runtime)
        except EdgepackError as exc:
            return _timed(TargetResult(profile, "unsupported", error=str(exc)), timer)
        missing = exporter.toolchain().missing
    if missing:
        hints = "; ".join(missing.values())
        return _timed(TargetResult(profile, "failed", error=f"toolchain for '{profile.runtime}' is missing: {hints}"),
                      timer)
    result = TargetResult(profile, "failed")
    own_session = session is None
    session = session or ExportSession()
    baseline = session.baseline(profile, lambda: _Fp32Baseline(exporter, source, profile, recipes, workdir, calib))
    try:
        context = training or PassContext(calib=calib, input_names=tuple(s.name for s in source.inputs))
        _Chain(result, exporter, source, recipes, calib, evaluation, workdir, baseline, progress, context,
               session, timer).walk()
    finally:
        if own_session:
            session.close()
    _timed(result, timer)
    if result.artifact is not None:
        result.status = "ok"
    else:
        tried = [a for a in result.attempts if a.status != "skipped"] or result.attempts
        result.error = "; ".join(f"{a.recipe}: {a.reason}" for a in tried) or "no recipe to try"
    return result


def _timed(result: TargetResult, timer: StageTimer) -> TargetResult:
    timer.stop()
    result.timings = timer.to_dict()
    return result


@dataclass
class _Chain:
    """Everything one target's recipe attempts share."""

    result: TargetResult
    exporter: Exporter
    source: ModelSource
    recipes: RecipeBook
    calib: Dataset | None
    evaluation: Evaluation
    workdir: Path
    baseline: _Fp32Baseline
    progress: ProgressFn
    context: PassContext
    session: ExportSession
    timer: StageTimer

    def attempt(self, recipe: Recipe, label: str) -> Attempt:
        """Export with ``recipe``, run it, check parity/gate/latency; record and return the attempt."""
        profile = self.result.profile
        started = time.perf_counter()
        attempt = Attempt(label, "error", "")
        self.result.attempts.append(attempt)
        try:
            recipe = self._keep_postprocess_float(recipe)
            compressed = self.source
            if recipe.passes:
                self.progress(profile.id, f"compressing {label}")
                with self.timer.stage("convert"):
                    compressed = apply_passes(self.source, recipe.passes, self.context)
            self.progress(profile.id, f"exporting {label}")
            calibrates = self.calib is not None and QuantizationPlan(recipe, None).needs_calibration
            with self.timer.stage("calibrate" if calibrates else "convert"):
                artifact = self.exporter.export(compressed, profile, recipe, self.calib, self.workdir / _dirname(label))
            attempt.converter = artifact.converter
            with self.timer.stage("load"):
                predictor = self.exporter.predictor(artifact, compressed)
            if isinstance(predictor, NotRunnable):
                attempt.status, attempt.reason = "passed", f"exported; not runnable here: {predictor.reason}"
                self.result.artifact, self.result.runnable = artifact, predictor.reason
                self._place(artifact, compressed)
                return attempt
            self.progress(profile.id, f"checking {label}")
            source_reference = self.session.reference(self.evaluation.reference)  # outputs computed once per export
            reference = source_reference if compressed is self.source else reference_predictor(compressed)
            try:
                _check(attempt, recipe, predictor, self.evaluation, reference, self.baseline,
                       profile.latency_gate == "host", self.timer, source_reference)
            finally:
                predictor.close()
            if not attempt.parity.passed:
                attempt.status, attempt.reason = "rejected", f"parity: {attempt.parity.reason}"
                self._diverge(artifact, recipe, compressed, label)
            elif not attempt.gate.passed:
                attempt.status, attempt.reason = "rejected", f"gate: {attempt.gate.reason}"
            else:
                attempt.status, attempt.reason = "passed", "parity and gate passed"
                if predictor.proxy_for:
                    attempt.reason += f" on {predictor.proxy_for}"
                    self.result.runnable = f"checked on {predictor.proxy_for}"
                self.result.artifact = artifact
                self._place(artifact, compressed)
        except Exception as exc:  # noqa: BLE001 - one target's failure must not stop the others
            _raise_if_fatal(exc, profile.id)
            attempt.status, attempt.reason = "error", _one_line(exc)
        finally:
            attempt.seconds = time.perf_counter() - started
        return attempt

    def _keep_postprocess_float(self, recipe: Recipe) -> Recipe:
        """``recipe`` with the appended NMS and the head it reads kept in float when it quantizes
        (:func:`edgepack.postprocess.float_nodes`), on runtimes whose quantizer takes node scopes; LiteRT
        has no int8 NMS kernel, so its converter keeps the NMS float by itself."""
        if (recipe.precision not in QUANTIZED_PRECISIONS or not self.exporter.capabilities.keeps_scopes_float
                or postprocess_settings(self.source) is None):
            return recipe
        hub = export_onnx(self.source, self.workdir / "_onnx", dynamic=self.result.profile.dynamic_shapes)
        keep = [name for name in float_nodes(hub) if name not in recipe.exclude]
        return recipe.model_copy(update={"exclude": [*recipe.exclude, *keep]}) if keep else recipe

    def _diverge(self, artifact: Artifact, recipe: Recipe, source: ModelSource, label: str) -> None:
        """Record where ``artifact`` (which failed parity) first differs from ``source``, layer by layer."""
        profile = self.result.profile
        self.progress(profile.id, f"locating the divergence of {label}")
        with self.timer.stage("parity"):
            self._find_divergence(artifact, recipe, source, label)

    def _find_divergence(self, artifact: Artifact, recipe: Recipe, source: ModelSource, label: str) -> None:
        from edgepack.divergence import find_divergence

        profile = self.result.profile
        try:
            hub = export_onnx(source, self.workdir / "_onnx", dynamic=profile.dynamic_shapes)
            feeds = self.evaluation.parity_inputs.batch(0)
            report = find_divergence(hub, self.exporter, artifact, feeds, recipe.parity)
            self.result.divergence = {"recipe": label, **report.to_dict(), "summary": report.summary()}
        except Exception as exc:  # noqa: BLE001 - the report explains a failure; it never causes one
            _raise_if_fatal(exc, profile.id)
            self.result.divergence = {"recipe": label, "error": _one_line(exc)}

    def _place(self, artifact: Artifact, source: ModelSource) -> None:
        """Record where the shipped artifact's ops would run on each accelerator (never fails the target)."""
        with self.timer.stage("placement"):
            self._placement(artifact, source)

    def _placement(self, artifact: Artifact, source: ModelSource) -> None:
        profile = self.result.profile
        try:
            # Judge the graph the device builds: an artifact shipped with static shapes (DLA) is checked static.
            dynamic = profile.dynamic_shapes and not all(spec.is_static for spec in artifact.inputs)
            folder = "_onnx" if dynamic == profile.dynamic_shapes else "_onnx_static"
            hub = export_onnx(source, self.workdir / folder, dynamic=dynamic)
            report = placement_for(profile, artifact.precision, artifact.path, artifact.format, hub)
            self.result.placement = None if report is None else report.to_dict()
        except Exception as exc:  # noqa: BLE001 - a placement problem is reported, the artifact still ships
            _raise_if_fatal(exc, profile.id)
            self.result.placement = {"error": _one_line(exc)}

    def sensitivity(self, recipe: Recipe) -> list[LayerSensitivity]:
        """The ranking of :meth:`rank`, computed once per export for each runtime, export settings and recipe
        (a failure is cached too and raised again)."""
        key = (export_settings_key(self.result.profile), recipe.model_dump_json())
        if key not in self.session.sensitivity:
            with self.timer.stage("sensitivity"):
                try:
                    self.session.sensitivity[key] = self.rank(recipe)
                except Exception as exc:  # noqa: BLE001 - re-raised below, for this target and the next
                    _raise_if_fatal(exc, self.result.profile.id)
                    self.session.sensitivity[key] = exc
        ranking = self.session.sensitivity[key]
        if isinstance(ranking, Exception):
            raise ranking
        return ranking

    def rank(self, recipe: Recipe) -> list[LayerSensitivity]:
        """Rank quantizable layers by the metric drop when each alone is quantized (on an eval subset)."""
        int8 = recipe.model_copy(update={"precision": "int8", "exclude": []})
        hub = export_onnx(self.source, self.workdir / "_onnx", dynamic=self.result.profile.dynamic_shapes)
        excludable = self.exporter.excludable_layers(
            self.source, self.result.profile, int8, self.calib, self.workdir / "_layers", quantizable_layers(hub)
        )
        layers = excludable[: recipe.mixed.max_layers_ranked]
        if not layers:
            raise UnsupportedError(f"{self.exporter.runtime}'s quantizer can keep none of this model's layers in float")
        gate = self.evaluation.gate
        subset = gate.data.take(slice(0, recipe.mixed.sensitivity_samples))
        quick = Gate(subset, gate.output, gate.max_drop, metric=gate.metric)  # a user scorer is too slow per layer
        reference = self.session.reference(self.evaluation.reference)  # the gate's samples: outputs already known
        reference_logits = quick.reference_logits(reference)
        baseline = quick.evaluate(reference, reference, reference_logits).value
        counter = iter(range(len(layers) + 1))

        def evaluate(exclude: list[str]) -> float:
            self.progress(self.result.profile.id, f"sensitivity {next(counter) + 1}/{len(layers)}")
            variant = int8.model_copy(update={"exclude": exclude})
            artifact = self.exporter.export(self.source, self.result.profile, variant, self.calib,
                                            self.workdir / "_sensitivity")
            predictor = self.exporter.predictor(artifact, self.source)
            if isinstance(predictor, NotRunnable):
                raise UnsupportedError(f"sensitivity analysis needs a host predictor: {predictor.reason}")
            try:
                return quick.evaluate(reference, predictor, reference_logits).value
            finally:
                predictor.close()
                shutil.rmtree(self.workdir / "_sensitivity", ignore_errors=True)

        return rank_layers(layers, baseline, evaluate)

    def mixed(self, recipe: Recipe) -> None:
        """Keep the fewest most sensitive layers in float until an attempt passes."""
        ranking_attempt = Attempt(recipe.name, "error", "")
        started = time.perf_counter()
        try:
            ranking = self.sensitivity(recipe)
        except Exception as exc:  # noqa: BLE001
            _raise_if_fatal(exc, self.result.profile.id)
            ranking_attempt.reason = f"sensitivity analysis failed: {_one_line(exc)}"
            self.result.attempts.append(ranking_attempt)
            return
        self.result.sensitivity = [r.to_dict() for r in ranking]
        candidates = exclusion_candidates(ranking, recipe.mixed.max_float_layers)
        if not candidates:
            ranking_attempt.status, ranking_attempt.reason = "skipped", "no layer loses accuracy when quantized alone"
            ranking_attempt.seconds = time.perf_counter() - started
            self.result.attempts.append(ranking_attempt)
            return
        for exclude in candidates:
            variant = recipe.model_copy(update={"precision": "int8", "exclude": exclude})
            attempt = self.attempt(variant, f"{recipe.name}[{len(exclude)} float]")
            attempt.excluded = exclude
            if self.result.artifact is not None:
                return

    def walk(self) -> None:
        """Try the profile's recipes in order; the first that passes wins."""
        for name in self.result.profile.recipes:
            recipe = self.recipes.get(name)
            probe = recipe.model_copy(update={"precision": "int8"}) if recipe.precision == "mixed" else recipe
            reason = self.exporter.refusal(probe)
            if reason is None and self.calib is None and QuantizationPlan(probe, None).needs_calibration:
                reason = (f"recipe '{name}' needs calibration data (--calib); edgepack makes none: "
                          f"{calibration_refusal(self.source.inputs)}")
            if reason is not None:
                self.result.attempts.append(Attempt(name, "skipped", reason))
                continue
            if recipe.precision == "mixed":
                self.mixed(recipe)
            else:
                self.attempt(recipe, name)
            if self.result.artifact is not None:
                return


QUANTIZED_PRECISIONS = frozenset({"int8", "int8-dynamic", "int4-weight"})
"""Recipe precisions whose quantizers take an ``exclude`` list (``mixed`` is walked as ``int8``)."""


def _dirname(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label)
