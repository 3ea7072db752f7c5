"""TFLite / LiteRT exporter: ONNX hub -> onnx2tf -> ``.tflite``; alternate path litert-torch.

Flow of :meth:`TfliteExporter.export`:

1. a static-shape (batch 1) ONNX file from the hub (:func:`edgepack.exporters.onnx.hub.export_onnx`);
2. onnx2tf in a subprocess (:mod:`edgepack.exporters.tflite.worker`): onnxslim with fixed input shapes,
   node names sanitised for TensorFlow, global average pools made ``GlobalAveragePool``,
   ``output_signaturedefs=True``, no network (its sample-image download is replaced and every
   non-loopback connection raises), calibration arrays only from ``calib``. One run writes every file
   onnx2tf makes for its options (float32 and float16 always; dynamic-range, int8, full-integer and
   int16-activation files when quantizing); the recipe picks one (:mod:`edgepack.exporters.tflite.quant`)
   and the others are remembered for the rest of the recipe chain;
3. if that fails and the source has a torch module: litert-torch in a subprocess (fp32 only);
4. the chosen file is copied to ``workdir/model.tflite``, loaded with the LiteRT interpreter, and its
   own I/O (names, shapes, dtypes, layout, quantization parameters) is recorded together with how each
   source tensor maps onto it (:mod:`edgepack.exporters.tflite.model_io`).

TensorFlow and onnx2tf are never imported in this process; ``ai_edge_litert`` is (it does not import
TensorFlow).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.compress.recipe import Recipe
from edgepack.compress.sensitivity import quantizable_layers
from edgepack.contract.metadata import Contract
from edgepack.data.dataset import Dataset
from edgepack.errors import ExportError
from edgepack.exporters.base import (
    Arrays,
    Artifact,
    BenchAdapter,
    Capabilities,
    Exporter,
    NotRunnable,
    Packaging,
    Predictor,
    Toolchain,
)
from edgepack.exporters.onnx.hub import export_onnx
from edgepack.exporters.tflite.model_io import (
    DEFAULT_THREADS,
    TfliteIO,
    TflitePredictor,
    artifact_specs,
    check_loadable,
    flex_ops,
    input_perms,
    match_inputs,
    match_outputs,
    read_tflite_io,
    tflite_operators,
)
from edgepack.exporters.tflite.graph import tflite_graph_ops
from edgepack.exporters.tflite.layers import LayerMap, float_op_outputs, map_layers
from edgepack.exporters.tflite.quant import (
    CALIBRATED_FILE,
    ONNX2TF_FILES,
    TfliteQuantization,
    artifact_layout,
    check_calibration,
    quantization_for,
    unsupported_reason,
)
from edgepack.exporters.tflite.worker_client import WorkerOutcome, last_exception, run_worker, summarize_failure
from edgepack.models.source import ModelSource, TensorSpec
from edgepack.targets.placement import GraphOp
from edgepack.targets.schema import TargetProfile

__all__ = [
    "DEFAULT_THREADS",
    "LITERT_TORCH_MISSING",
    "TfliteExporter",
    "TflitePredictor",
    "WorkerOutcome",
    "flex_ops",
    "read_tflite_io",
    "run_worker",
    "summarize_failure",
    "tflite_operators",
]

LITERT_TORCH_PRECISIONS = ("fp32",)
LITERT_TORCH_MISSING = "litert-torch not installed: pip install 'edgepack[litert-torch]'"
CALIB_SAMPLES = 20
"""Calibration samples saved for a float conversion: onnx2tf only feeds the first batch to its checks
(and the first 20 as its sample images); 20 is its own sample count."""
DEFAULT_TIMEOUT_S = 900.0
PSEUDO_OPS_FOR_FLEX = {
    "FlexErf": "erf",
    "FlexAsin": "asin",
    "FlexAcos": "acos",
    "FlexAtan": "atan",
    "FlexGatherNd": "gathernd",
    "FlexPow": "power",
}
"""TF Select ops onnx2tf can avoid with ``replace_to_pseudo_operators`` (its op keys are lower-case)."""
_CACHE = "_tflite_onnx2tf_cache"
_CALIBRATED_CACHE = "_tflite_calibrated_cache"


@dataclass(frozen=True)
class _Converted:
    """A converted .tflite file and how it was made."""

    path: Path
    converter: str
    notes: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Calibrated:
    """The calibrated float .tflite (bytes) of one ONNX file and calibration set, and its layer map."""

    model: bytes = field(repr=False)
    layers: LayerMap
    notes: tuple[str, ...]
    samples: int


def bench_predictor(artifact: Artifact, threads: int | None) -> tuple[Predictor, int]:
    """The host bench's predictor: ``threads`` interpreter threads (default :data:`DEFAULT_THREADS`)."""
    count = threads or DEFAULT_THREADS
    return TflitePredictor(artifact.path, artifact.settings, threads=count), count


class TfliteExporter(Exporter):
    """TFLite (LiteRT) artifacts through onnx2tf, with litert-torch as the alternate path."""

    runtime = "tflite"
    capabilities = Capabilities(
        op_vocabulary="tflite",
        graph_formats=frozenset({"tflite"}),
        bench=BenchAdapter("ai_edge_litert.interpreter", "ai-edge-litert", bench_predictor),
        packaging=(
            Packaging("tflite", "android", distribution="ai-edge-litert", snippet=("kotlin/Run.kt", "snippets/run.kt.j2"),
                      app_library="com.google.ai.edge.litert:litert", app_templates="android/litert"),
            Packaging("tflite", "python", distribution="ai-edge-litert", python_runtime="litert",
                      python_module="ai_edge_litert", snippet=("python/run.py", "snippets/run.py.j2")),
        ),
        templates=Path(__file__).with_name("templates"),
        device_runners=frozenset({"adb"}),
        isolation="worker process",  # onnx2tf/TensorFlow in a subprocess (worker.py)
    )
    artifact_formats = {"tflite": ".tflite"}
    distributions = ("onnx2tf", "tensorflow-cpu", "ai-edge-litert", "onnx", "onnxslim", "torch")

    def __init__(self, *, timeout_s: float = DEFAULT_TIMEOUT_S, threads: int = DEFAULT_THREADS) -> None:
        self.timeout_s = timeout_s
        self.threads = threads

    def supports(self, recipe: Recipe) -> str | None:
        return unsupported_reason(recipe)

    def export(
        self,
        source: ModelSource,
        profile: TargetProfile,
        recipe: Recipe,
        calib: Dataset | None,
        workdir: Path,
    ) -> Artifact:
        self.require_support(recipe)
        quantization = quantization_for(recipe, calib)
        if quantization.static:
            check_calibration(source.inputs, calib)
        workdir = Path(workdir).resolve()  # the worker runs in its own directory
        workdir.mkdir(parents=True, exist_ok=True)
        converted = self._convert(source, recipe, quantization, calib, workdir)
        target = workdir / "model.tflite"
        shutil.copyfile(converted.path, target)
        io, input_map, output_map = self._map_io(source, target, converted.converter, calib, workdir)
        toolchain = dict(self.toolchain().versions)
        if converted.converter == "litert-torch":
            toolchain.update(Toolchain.of("litert-torch").versions)
        settings: dict[str, Any] = {"signature": io.signature, "input_map": input_map, "output_map": output_map}
        if converted.settings:
            settings["quantization"] = converted.settings
        artifact = Artifact(
            target_id=profile.id,
            runtime=self.runtime,
            path=target,
            files=(target,),
            format="tflite",
            precision=recipe.precision,
            recipe=recipe.name,
            inputs=tuple(artifact_specs(source.inputs, io.inputs, input_map, keep_preprocess=True)),
            outputs=tuple(artifact_specs(source.outputs, io.outputs, output_map, keep_preprocess=False)),
            toolchain=toolchain,
            converter=converted.converter,
            notes=converted.notes,
            settings=settings,
        )
        if self.embeds_contract_in_export:
            self.embed_contract(artifact, Contract.for_artifact(source, artifact))
        return artifact

    embeds_contract_in_export = True
    """Subclasses that finish the artifact after this export (the Edge TPU's) embed the contract themselves."""

    def embed_contract(self, artifact: Artifact, contract: Contract) -> None:
        from edgepack.exporters.tflite.contract import write_tflite_contract

        for path in artifact.files:
            if path.suffix == ".tflite":
                write_tflite_contract(path, contract)

    def predictor(self, artifact: Artifact, source: ModelSource) -> Predictor | NotRunnable:
        if importlib.util.find_spec("ai_edge_litert") is None:
            return NotRunnable("ai-edge-litert is not installed: pip install ai-edge-litert")
        return TflitePredictor(artifact.path, artifact.settings, threads=self.threads)

    def intermediate_values(self, artifact: Artifact, tensors: list[str], feeds: Arrays, *,
                            hub: Path) -> dict[str, np.ndarray]:
        """Matched op by op on the LiteRT builtin kernels (:mod:`edgepack.exporters.tflite.intermediates`)."""
        from edgepack.exporters.tflite.intermediates import artifact_values

        return artifact_values(hub, artifact.path, artifact.settings, tensors, feeds)

    def graph_ops(self, path: Path, fmt: str) -> list[GraphOp]:
        return tflite_graph_ops(path)

    # -- conversion paths ----------------------------------------------------------------------

    def _convert(
        self, source: ModelSource, recipe: Recipe, quantization: TfliteQuantization, calib: Dataset | None,
        workdir: Path,
    ) -> _Converted:
        """onnx2tf first; litert-torch when that fails and the source is a torch module."""
        try:
            return self._via_onnx2tf(source, quantization, calib, workdir)
        except ExportError as first:
            primary = f"onnx2tf: {first.message}"
        alternate = self._litert_unavailable(source, recipe)
        if alternate is None:
            try:
                converted = self._via_litert_torch(source, recipe, workdir)
            except ExportError as second:
                alternate = f"litert-torch: {second.message}"
            else:
                note = f"converted with litert-torch because {primary}"
                return _Converted(converted.path, converted.converter, (note, *converted.notes))
        raise ExportError(f"TFLite conversion of {source.uri} failed on every path: {primary} | {alternate}")

    def _via_onnx2tf(
        self, source: ModelSource, quantization: TfliteQuantization, calib: Dataset | None, workdir: Path
    ) -> _Converted:
        """Convert with onnx2tf; if the result needs TF Select (Flex) ops that onnx2tf can replace with
        its pseudo-ops (approximations built from builtin ops), convert once more with them."""
        if quantization.float_layers:
            return self._mixed_precision(source, quantization, calib, workdir)
        onnx_path = export_onnx(source, workdir / "onnx", dynamic=False).resolve()
        job = _onnx2tf_job(source, onnx_path, calib, quantization, workdir / "onnx2tf", pseudo_ops=())
        chosen, notes = self._onnx2tf_file(source, job, quantization.variant)
        flex = flex_ops(chosen)
        pseudo = sorted({PSEUDO_OPS_FOR_FLEX[op] for op in flex if op in PSEUDO_OPS_FOR_FLEX})
        if pseudo:
            job = _onnx2tf_job(source, onnx_path, calib, quantization, workdir / "onnx2tf_pseudo", pseudo_ops=pseudo)
            chosen, notes = self._onnx2tf_file(source, job, quantization.variant)
            flex = flex_ops(chosen)
            notes = (
                *notes,
                f"onnx2tf pseudo-ops used for {', '.join(pseudo)} (builtin-op approximations instead of TF Select ops)",
            )
        _check_builtin_only(chosen, flex)
        return _Converted(chosen, "onnx2tf", tuple(notes), quantization.settings(job.samples))

    def _onnx2tf_file(self, source: ModelSource, job: _Onnx2tfJob, variant: str) -> tuple[Path, tuple[str, ...]]:
        """The file onnx2tf writes for ``variant``, converting only when no earlier run in this process
        already wrote it from identical bytes with identical options (a recipe chain asks for int8, then
        fp16, then fp32 of the same ONNX file; one onnx2tf run writes them all)."""
        cache: dict[str, dict[str, Any]] = source.extra.setdefault(_CACHE, {})
        hit = cache.get(job.keys[variant])
        if hit is not None and Path(hit["path"]).exists():
            return Path(hit["path"]), tuple(hit["notes"])
        outcome = run_worker("onnx2tf", job.request, job.rundir, self.timeout_s)
        if not outcome.ok:
            reason = _with_op_type(outcome.reason, job.rundir / "model.onnx")
            raise ExportError(f"{reason} (log: {outcome.log})")
        for name, path in outcome.files.items():
            if name in job.keys:
                cache[job.keys[name]] = {"path": path, "notes": list(outcome.notes)}
        path = outcome.files.get(variant)
        if path is None:
            log = outcome.log.read_text(encoding="utf-8", errors="replace") if outcome.log else ""
            why = last_exception(log) or "no error reported"
            raise ExportError(
                f"onnx2tf did not write model_{ONNX2TF_FILES[variant]}.tflite ({why}) (log: {outcome.log})"
            )
        return Path(path), outcome.notes

    # -- mixed precision -------------------------------------------------------------------------

    def excludable_layers(
        self, source: ModelSource, profile: TargetProfile, recipe: Recipe, calib: Dataset | None, workdir: Path,
        layers: list[str],
    ) -> list[str]:
        """The layers of ``layers`` that onnx2tf's conversion computes in one op each (see
        :mod:`edgepack.exporters.tflite.layers`): only those can be kept in float."""
        probe = recipe.model_copy(update={"exclude": layers[:1]})
        if not layers or self.supports(probe) is not None:
            return []  # this recipe has no mixed-precision form on LiteRT
        quantization = quantization_for(recipe.model_copy(update={"exclude": []}), calib)
        check_calibration(source.inputs, calib)
        calibrated = self._calibrated(source, quantization, calib, Path(workdir).resolve())
        return [layer for layer in layers if layer in calibrated.layers.tensors]

    def _calibrated(
        self, source: ModelSource, quantization: TfliteQuantization, calib: Dataset | None, workdir: Path
    ) -> _Calibrated:
        """The calibrated float model (converted and calibrated once per ONNX file and calibration set,
        kept in memory because callers may delete their work directories) and its layer map."""
        onnx_path = export_onnx(source, workdir / "onnx", dynamic=False).resolve()
        job = _onnx2tf_job(source, onnx_path, calib, quantization, workdir / "onnx2tf", pseudo_ops=())
        cache: dict[str, _Calibrated] = source.extra.setdefault(_CALIBRATED_CACHE, {})
        key = job.keys["int8"]  # the same ONNX bytes, options, calibration samples and weight granularity
        if key not in cache:
            int8_file, notes = self._onnx2tf_file(source, job, "int8")
            rundir = workdir / "onnx2tf_calibrate"
            rundir.mkdir(parents=True, exist_ok=True)
            request = {
                "saved_model": str(int8_file.parent),
                "calib": job.request["calib"],
                "quant_type": quantization.quant_type,
                "output": str(rundir / CALIBRATED_FILE),
            }
            outcome = run_worker("calibrate", request, rundir, self.timeout_s)
            if not outcome.ok:
                raise ExportError(f"calibrating onnx2tf's saved model failed: {outcome.reason} (log: {outcome.log})")
            path = Path(outcome.files["int8-calibrated"])
            feeds = _probe_inputs(source, calib)
            io = read_tflite_io(path)
            input_map = match_inputs(source.inputs, io.inputs, "onnx2tf")
            tflite_feeds = {
                entry["name"]: np.ascontiguousarray(np.transpose(feeds[name], entry["perm"]))
                for name, entry in input_map.items()
            }
            layers = map_layers(onnx_path, quantizable_layers(onnx_path), path, feeds, tflite_feeds, io.signature)
            cache[key] = _Calibrated(path.read_bytes(), layers, notes, job.samples)
        return cache[key]

    def _mixed_precision(
        self, source: ModelSource, quantization: TfliteQuantization, calib: Dataset | None, workdir: Path
    ) -> _Converted:
        """Static int8 with ``quantization.float_layers`` kept in float: the calibrated model quantized by
        the TFLite converter's MLIR quantizer with those layers' ops denylisted."""
        calibrated = self._calibrated(source, quantization, calib, workdir)
        unmapped = [layer for layer in quantization.float_layers if layer not in calibrated.layers.tensors]
        if unmapped:
            raise ExportError(
                f"cannot keep {', '.join(unmapped)} in float: onnx2tf's conversion computes no single op "
                f"equal to {'it' if len(unmapped) == 1 else 'them'} (see edgepack.exporters.tflite.layers)"
            )
        rundir = workdir / "onnx2tf_mixed"
        rundir.mkdir(parents=True, exist_ok=True)
        source_file = rundir / CALIBRATED_FILE
        source_file.write_bytes(calibrated.model)
        float_ops = [calibrated.layers.tensors[layer] for layer in quantization.float_layers]
        request = {
            "calibrated": str(source_file),
            "quant_type": quantization.quant_type,
            "float_nodes": float_ops,
            "output": str(rundir / "model_int8_mixed.tflite"),
        }
        outcome = run_worker("selective-int8", request, rundir, self.timeout_s)
        if not outcome.ok:
            raise ExportError(f"{outcome.reason} (log: {outcome.log})")
        chosen = Path(outcome.files["int8-mixed"])
        _check_builtin_only(chosen, flex_ops(chosen))
        computed_in_float = float_op_outputs(chosen)
        still_int8 = [layer for layer, op in zip(quantization.float_layers, float_ops) if op not in computed_in_float]
        if still_int8:
            raise ExportError(f"LiteRT's quantizer did not keep {', '.join(still_int8)} in float")
        settings = {**quantization.settings(calibrated.samples), "float_ops": float_ops}
        return _Converted(chosen, "onnx2tf", calibrated.notes, settings)

    @staticmethod
    def _litert_unavailable(source: ModelSource, recipe: Recipe) -> str | None:
        """Why the litert-torch path cannot be tried, or ``None`` when it can."""
        if source.torch_module is None and source.exported_program is None:
            return "litert-torch: not applicable (the source has no torch module)"
        if recipe.precision not in LITERT_TORCH_PRECISIONS:
            why = (
                "litert_torch.convert has no float16 option"
                if recipe.precision == "fp16"
                else "litert_torch.convert writes float32 only; its quantization is not wired into edgepack"
            )
            return f"litert-torch: precision '{recipe.precision}' is not supported on this path ({why})"
        if importlib.util.find_spec("litert_torch") is None:
            return LITERT_TORCH_MISSING
        return None

    def _via_litert_torch(self, source: ModelSource, recipe: Recipe, workdir: Path) -> _Converted:
        rundir = workdir / "litert_torch"
        rundir.mkdir(parents=True, exist_ok=True)
        request = _litert_request(source, recipe, rundir)
        outcome = run_worker("litert-torch", request, rundir, self.timeout_s)
        if outcome.missing:
            raise ExportError(f"{LITERT_TORCH_MISSING} ({outcome.reason})")
        if not outcome.ok:
            raise ExportError(f"{outcome.reason} (log: {outcome.log})")
        path = Path(outcome.files[recipe.precision])
        check_loadable(path)
        return _Converted(path, "litert-torch", outcome.notes)

    # -- I/O -----------------------------------------------------------------------------------

    def _map_io(
        self, source: ModelSource, path: Path, converter: str, calib: Dataset | None, workdir: Path
    ) -> tuple[TfliteIO, dict[str, Any], dict[str, Any]]:
        """Read the .tflite I/O and map the source's tensors onto it (see :mod:`tflite_io`).

        One probe input is run through the source (its outputs' concrete shapes: the declared ones may
        stay symbolic after the inputs were fixed) and the .tflite (whose values break ties between
        outputs of one shape); outputs are matched by name, then shape, values and order."""
        io = read_tflite_io(path)
        input_map = match_inputs(source.inputs, io.inputs, converter)
        probe = _probe_outputs(source, path, io, input_map, calib, workdir)
        output_map = match_outputs(source.outputs, io.outputs, converter, probe)
        return io, input_map, output_map


_NODE_IN_REASON = re.compile(r"\[ONNX node (?P<node>.+)\]$")


def _with_op_type(reason: str, prepared: Path) -> str:
    """``... [ONNX node NAME]`` -> ``... [ONNX LSTM node NAME]``: the op type (and unmangled name) of the
    node onnx2tf failed on, read from the prepared ONNX file the worker converted (after onnxslim; the
    reason is unchanged when that cannot be read)."""
    match = _NODE_IN_REASON.search(reason)
    if match is None or not prepared.is_file():
        return reason
    try:
        import onnx

        model = onnx.load(str(prepared), load_external_data=False)
    except Exception:  # noqa: BLE001 - the op type is a courtesy
        return reason
    printed = match["node"]
    found = next((n for n in _all_nodes(model.graph) if printed in (n.name, _onnx2tf_name(n.name))), None)
    if found is None:
        return reason
    return f"{reason[: match.start()]}[ONNX {found.op_type} node {found.name or printed}]"


def _onnx2tf_name(name: str) -> str:
    """A node name as onnx2tf prints it (``:`` -> ``__``, a leading ``/`` -> ``wa/``)."""
    return re.sub(r"^/", "wa/", name.replace(":", "__"))


def _all_nodes(graph: Any) -> Any:
    """Every node of ``graph`` and of its subgraphs (If/Loop bodies)."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.g.node:
                yield from _all_nodes(attribute.g)
            for sub in attribute.graphs:
                yield from _all_nodes(sub)


def _check_builtin_only(path: Path, flex: list[str]) -> None:
    """Refuse a .tflite that needs TF Select (Flex) ops (``flex``, from :func:`flex_ops`) or that the LiteRT
    interpreter cannot prepare."""
    if flex:
        raise ExportError(f"the .tflite needs TF Select (Flex) ops that LiteRT builtins lack: {', '.join(flex)}")
    check_loadable(path)


def _probe_outputs(
    source: ModelSource,
    path: Path,
    io: TfliteIO,
    input_map: dict[str, Any],
    calib: Dataset | None,
    workdir: Path,
) -> tuple[Arrays, Arrays | None] | None:
    """The source's outputs and the .tflite's outputs (keyed by .tflite name, dequantized; ``None`` when
    the .tflite cannot run it) for one input; ``None`` when the source cannot be run either."""
    try:
        feeds = _probe_inputs(source, calib)
        reference = _source_reference(source, feeds, workdir)
    except Exception:  # noqa: BLE001 - without it the declared shapes and the output order decide
        return None
    try:
        settings = {"signature": io.signature, "input_map": input_map, "output_map": {}}
        actual: Arrays | None = TflitePredictor(path, settings, threads=1).run_raw(feeds)
    except Exception:  # noqa: BLE001 - values only break ties; shapes still come from the source
        actual = None
    return reference, actual


def _probe_inputs(source: ModelSource, calib: Dataset | None) -> Arrays:
    if calib is not None and len(calib) and all(s.name in calib.inputs for s in source.inputs):
        return {s.name: np.asarray(calib.inputs[s.name][:1], dtype=s.dtype) for s in source.inputs}
    from edgepack.models.sample import example_inputs

    return example_inputs(source.inputs, batch=1, seed=0)


def _source_reference(source: ModelSource, feeds: Arrays, workdir: Path) -> Arrays:
    """The source's own outputs: the torch module when there is one, else ONNX Runtime on the static hub
    file (the one that was converted)."""
    names = [s.name for s in source.outputs]
    if source.torch_module is not None:
        import torch

        with torch.inference_mode():
            result = source.torch_module(*(torch.from_numpy(feeds[s.name]) for s in source.inputs))
        values = [result] if isinstance(result, torch.Tensor) else list(result)
        return {name: value.detach().cpu().numpy() for name, value in zip(names, values)}
    import onnxruntime as ort

    onnx_path = export_onnx(source, workdir / "onnx", dynamic=False)  # cached by the onnx2tf path
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, feeds)))


# --------------------------------------------------------------------------------------------------
# onnx2tf requests and the per-file cache keys
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Onnx2tfJob:
    """One worker request and the cache key of every file it can write."""

    request: dict[str, Any]
    keys: dict[str, str]
    """Variant -> key: same ONNX bytes, same options and the same calibration samples that variant
    depends on -> same file."""
    rundir: Path
    samples: int
    """Calibration samples per input saved for this request."""


def _artifact_perm(spec: TensorSpec) -> tuple[int, ...]:
    """The permutation onnx2tf applies to this input (calibration arrays are saved in that layout)."""
    return input_perms(spec, "onnx2tf")[0]


def _onnx2tf_job(
    source: ModelSource,
    onnx_path: Path,
    calib: Dataset | None,
    quantization: TfliteQuantization,
    rundir: Path,
    *,
    pseudo_ops: tuple[str, ...] | list[str],
) -> _Onnx2tfJob:
    """Save the calibration arrays (artifact layout; the recipe's sample count when quantizing
    statically, else :data:`CALIB_SAMPLES`) and the sample images, and describe the request."""
    rundir.mkdir(parents=True, exist_ok=True)
    count = quantization.calibration_samples or CALIB_SAMPLES
    arrays: dict[str, np.ndarray] = {}
    if calib is not None and len(calib) and all(s.name in calib.inputs for s in source.inputs):
        for spec in source.inputs:
            data = np.asarray(calib.inputs[spec.name][:count], dtype=spec.dtype)
            arrays[spec.name] = artifact_layout(data, _artifact_perm(spec))
    calib_paths: dict[str, str] = {}
    sample_images: str | None = None
    for spec in source.inputs:
        if spec.name not in arrays:
            continue
        data = arrays[spec.name]
        path = rundir / f"calib_{_safe_file_part(spec.name)}.npy"
        np.save(path, data)
        calib_paths[spec.name] = str(path)
        if sample_images is None and data.ndim == 4 and data.shape[-1] == 3 and spec.dtype.startswith("float"):
            sample_images = str(path)
    request = {
        "onnx": str(onnx_path),
        "output_dir": str(rundir / "out"),
        "input_shapes": {s.name: list(s.concrete_shape(1)) for s in source.inputs},
        "keep_ncw_input_names": [s.name for s in source.inputs if len(s.shape) == 3],
        # inputs already channel-last (a baked uint8 image): onnx2tf must not move their channels again
        "keep_nhwc_input_names": [s.name for s in source.inputs if len(s.shape) == 4 and (s.layout or "").upper() == "NHWC"],
        "pseudo_ops": list(pseudo_ops),
        "calib": calib_paths,
        "sample_images": sample_images,
        "quantize": quantization.worker_options(),
        "onnx2tf_files": dict(ONNX2TF_FILES),
    }
    samples = min((len(a) for a in arrays.values()), default=0)
    return _Onnx2tfJob(request, _variant_keys(onnx_path, request, arrays), rundir, samples)


def _digest(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _arrays_digest(arrays: dict[str, np.ndarray], limit: int | None) -> str:
    parts: list[str | bytes] = []
    for name in sorted(arrays):
        data = np.ascontiguousarray(arrays[name][:limit])
        parts += [name, str(data.shape), data.dtype.name, data.tobytes()]
    return _digest(*parts)


def _variant_keys(onnx_path: Path, request: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """Float files depend on the ONNX bytes, the options and the first :data:`CALIB_SAMPLES` samples
    (onnx2tf's checks); quantized ones also on the quantization options, and statically quantized ones
    on every calibration sample (full-integer ones on the I/O dtype too)."""
    fixed = ("input_shapes", "keep_ncw_input_names", "keep_nhwc_input_names", "pseudo_ops")
    options = json.dumps({k: request[k] for k in fixed}, sort_keys=True)
    base = _digest(Path(onnx_path).read_bytes(), options, _arrays_digest(arrays, CALIB_SAMPLES))
    keys = {"fp32": _digest(base, "fp32"), "fp16": _digest(base, "fp16")}
    quantize = request["quantize"]
    if quantize is None:
        return keys
    keys["int8-dynamic"] = _digest(base, "int8-dynamic", quantize["quant_type"])
    if quantize["integer"]:
        static = _digest(base, _arrays_digest(arrays, None), quantize["quant_type"])
        keys["int8"] = _digest(static, "int8")
        keys["int8-full"] = _digest(static, "int8-full", quantize["io_dtype"])
        keys["int16"] = _digest(static, "int16")
    return keys


def _safe_file_part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80] or "input"


# --------------------------------------------------------------------------------------------------
# litert-torch requests
# --------------------------------------------------------------------------------------------------


def _torch_export(module: Any, args: tuple[Any, ...]) -> Any:
    """``torch.export`` in eval mode (the module's own mode is restored afterwards)."""
    import torch

    was_training = bool(getattr(module, "training", False))
    module.eval()
    try:
        return torch.export.export(module, args, strict=False)
    except Exception as exc:  # noqa: BLE001 - reported as this path's failure
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ExportError(f"torch.export failed: {type(exc).__name__}: {first}") from None
    finally:
        module.train(was_training)


def _litert_request(source: ModelSource, recipe: Recipe, rundir: Path) -> dict[str, Any]:
    """Save the source as a ``torch.export`` program (.pt2) plus its batch-1 sample inputs."""
    import torch

    from edgepack.models.sample import example_inputs

    arrays = example_inputs(source.inputs, batch=1, seed=0)
    sample_paths = []
    for index, spec in enumerate(source.inputs):
        path = rundir / f"sample_{index}.npy"
        np.save(path, arrays[spec.name])
        sample_paths.append(str(path))
    program = source.exported_program
    if program is None:
        args = tuple(torch.from_numpy(arrays[s.name]) for s in source.inputs)
        program = _torch_export(source.torch_module, args)
    program_path = rundir / "model.pt2"
    torch.export.save(program, str(program_path))
    return {
        "program": str(program_path),
        "sample_args": sample_paths,
        "output": str(rundir / "model.tflite"),
        "precision": recipe.precision,
    }
