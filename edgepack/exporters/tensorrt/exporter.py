"""TensorRT (Jetson) exporter: a portable ONNX for ``trtexec`` plus everything needed to build on the device.

Engines are device-, TensorRT- and JetPack-specific, so they are never shipped: the bundle carries the ONNX
(fp32 for ``--fp16`` builds, or explicit-quantization QDQ for int8: symmetric int8, per-channel weights,
per-tensor activations, Q/DQ placed by ONNX Runtime's quantizer with TensorRT-compatible settings), a
TensorRT calibration cache with the same activation ranges (for implicit-quantization builds), the exact
``trtexec`` command with the profile's flags and a build script. Where ``trtexec`` and an NVIDIA GPU are present
the engine is built and timed here (:mod:`edgepack.exporters.tensorrt.engine`; recorded as
``settings["engine_build"]``, the engine itself is discarded); numerics are checked on ONNX Runtime CPU as a
proxy (accuracy and parity of the same graph, never latency).
"""

from __future__ import annotations

import shlex
import shutil
import struct
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgepack.compress.quantize import QuantizationPlan, plan
from edgepack.compress.recipe import Recipe
from edgepack.data.dataset import Dataset
from edgepack.contract.metadata import Contract
from edgepack.exporters.base import Arrays, Artifact, Capabilities, Exporter, NotRunnable, Packaging, Predictor
from edgepack.exporters.onnx.hub import export_onnx, is_prequantized
from edgepack.exporters.onnx.graph import onnx_graph_ops
from edgepack.exporters.ort.quant import CALIBRATION_METHODS
from edgepack.models.source import ModelSource, TensorSpec
from edgepack.postprocess.apply import RAW_OUTPUTS_KEY, postprocess_settings
from edgepack.postprocess.settings import head_layout
from edgepack.targets.placement import GraphOp
from edgepack.targets.schema import TargetProfile

PRECISIONS = ("fp32", "fp16", "int8")
CACHE_HEADER = "TRT-100300-EntropyCalibration2"
"""Calibration cache header as written by TensorRT 10.3 (the profile pin's lower bound)."""
DYNAMIC_MAX_BATCH = 8
BUILD_SCRIPT = "build_engine.sh"


class OrtProxyPredictor(Predictor):
    """Runs the TensorRT-bound ONNX on ONNX Runtime CPU with graph optimisations off, so Q/DQ pairs execute as
    simulated quantization (TensorRT's int8 semantics) instead of ORT's own int8 kernels, whose u8/s8 paths
    saturate on CPUs without VNNI."""

    proxy_for = "ONNX Runtime CPU (proxy for TensorRT numerics; no latency)"

    def __init__(self, path: Path) -> None:
        from edgepack.exporters.ort.predictor import OrtPredictor

        self._inner = OrtPredictor(path, optimize=False)

    def __call__(self, inputs: Arrays) -> Arrays:
        return self._inner(inputs)


def _shape_flags(specs: tuple[TensorSpec, ...]) -> list[str]:
    """``--minShapes/--optShapes/--maxShapes`` for inputs with symbolic dims (batch 1 / 1 / 8)."""
    if all(spec.is_static for spec in specs):
        return []
    flags = []
    for flag, batch in (("--minShapes", 1), ("--optShapes", 1), ("--maxShapes", DYNAMIC_MAX_BATCH)):
        shapes = ",".join(f"{spec.name}:{'x'.join(str(d) for d in spec.concrete_shape(batch))}" for spec in specs)
        flags.append(f"{flag}={shapes}")
    return flags


def trtexec_command(
    profile: TargetProfile, recipe: Recipe, inputs: tuple[TensorSpec, ...], *, dla: bool, sparse: bool,
    onnx: str = "model.onnx",
) -> list[str]:
    """The ``trtexec`` argument list that builds and times the engine on the device from ``onnx``."""
    workspace_mb = max(256, min(4096, profile.memory_mb // 8))
    command = ["trtexec", f"--onnx={onnx}", "--saveEngine=model.engine", f"--memPoolSize=workspace:{workspace_mb}M"]
    if recipe.precision in ("fp16", "int8"):
        command.append("--fp16")
    if recipe.precision == "int8":
        command.append("--int8")
    if dla:
        command += ["--useDLACore=0", "--allowGPUFallback"]
    if sparse:
        command.append("--sparsity=enable")
    command += _shape_flags(inputs)
    return command + ["--separateProfileRun", "--dumpProfile", "--exportTimes=times.json"]


def _build_script(command: list[str], version: str) -> str:
    return (
        "#!/bin/sh\n"
        "# Builds and times the TensorRT engine on the Jetson itself (engines are not portable).\n"
        f"# TensorRT {version} (JetPack 6); trtexec is /usr/src/tensorrt/bin/trtexec on JetPack.\n"
        "set -eu\ncd \"$(dirname \"$0\")\"\n"
        'PATH="$PATH:/usr/src/tensorrt/bin"\n'
        f"{shlex.join(command)}\n"
    )


def write_calibration_cache(path: Path, ranges: dict[str, tuple[float, float]]) -> None:
    """TensorRT's text cache: one ``tensor: <big-endian float32 scale as hex>`` line per tensor (scale = amax/127).

    The explicit QDQ model does not need it; it serves implicit-quantization builds of the fp32 graph
    (``trtexec --int8 --calib=calibration.cache``) with the same calibration data."""
    lines = [CACHE_HEADER]
    for name, (low, high) in sorted(ranges.items()):
        scale = max(abs(low), abs(high)) / 127.0 or 1e-8
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    path.write_text("\n".join(lines) + "\n")


def _activation_ranges(hub: Path, quantization: QuantizationPlan, workdir: Path) -> dict[str, tuple[float, float]]:
    """Per-tensor activation ranges of the fp32 graph by the recipe's calibration method (what the QDQ model uses)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from edgepack.exporters.ort.quant import mse_overrides

    method = quantization.recipe.calibration.method
    if method == "mse":
        return {name: (float(o[0]["rmin"]), float(o[0]["rmax"]))
                for name, o in mse_overrides(hub, quantization, symmetric=True).items()}
    extra = {"percentile": quantization.recipe.calibration.percentile, "symmetric": True} if method == "percentile" else {}
    calibrator = create_calibrator(str(hub), augmented_model_path=str(workdir / "augmented.onnx"),
                                   calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
                                   extra_options=extra)
    batches = iter(quantization.calibration_batches())

    class Reader:
        def get_next(self) -> Arrays | None:
            return next(batches, None)

    calibrator.collect_data(Reader())
    data = calibrator.compute_data()
    (workdir / "augmented.onnx").unlink(missing_ok=True)
    return {name: (float(np.min(v.range_value[0])), float(np.max(v.range_value[1]))) for name, v in data.data.items()}


def _quantize_explicit(hub: Path, dst: Path, quantization: QuantizationPlan) -> dict[str, object]:
    """QDQ the way TensorRT consumes it: symmetric int8 activations and weights, per-channel weights."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    from edgepack.exporters.ort.quant import (
        _excluded_nodes,
        mse_overrides,
        _quiet_root_logger,
        _Reader,
        pre_process_in_workdir,
    )

    calibration = quantization.recipe.calibration
    with _quiet_root_logger():
        prepared = dst.with_name("preprocessed.onnx")
        pre_process_in_workdir(quant_pre_process, hub, prepared, skip_optimization=True)
        extra: dict[str, object] = {"CalibPercentile": calibration.percentile} if calibration.method == "percentile" else {}
        if calibration.method == "mse":
            extra["TensorQuantOverrides"] = mse_overrides(prepared, quantization, symmetric=True)
        quantize_static(
            str(prepared), str(dst), _Reader(quantization), quant_format=QuantFormat.QDQ, per_channel=True,
            reduce_range=False, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[calibration.method]),
            nodes_to_exclude=_excluded_nodes(prepared, quantization.exclude),
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False, **extra},
        )
        prepared.unlink()
    return {"quantization": "explicit QDQ (symmetric int8, per-channel weights, per-tensor activations)",
            "calibration": calibration.method, "calibration_samples": calibration.samples}


def _sparse(source: ModelSource) -> bool:
    return "semi_structured_24" in str(source.extra.get("passes", ""))


class TensorRtExporter(Exporter):
    """jetson-*: ONNX (fp16) or QDQ ONNX (int8) + trtexec build command; the engine is built on the device."""

    runtime = "tensorrt"
    capabilities = Capabilities(
        op_vocabulary="onnx",
        # An int8 (QDQ) artifact is placed on the float hub graph it was quantized from, not read itself.
        graph_formats=frozenset({"onnx"}),
        packaging=(Packaging("onnx-qdq", "python", distribution="onnxruntime", python_runtime="onnxruntime",
                             python_module="onnxruntime", simulate_quantization=True, snippet=("python/run.py", "snippets/run.py.j2")),),
        device_build_script=BUILD_SCRIPT,
        keeps_scopes_float=True,  # explicit QDQ through ORT's quantizer: nodes_to_exclude takes prefixes
        optional_tools=(("trtexec", "builds and times the engine here when an NVIDIA GPU is present (otherwise the "
                                    "bundle's build_engine.sh builds it on the device)"),),
    )
    artifact_formats = {"onnx-qdq": ".onnx", "onnx": ".onnx"}
    distributions: ClassVar[tuple[str, ...]] = ("onnx", "onnxruntime", "torch")

    def supports(self, recipe: Recipe) -> str | None:
        if recipe.precision not in PRECISIONS:
            return f"precision '{recipe.precision}' is not implemented for tensorrt"
        if recipe.precision == "int8" and recipe.quantization.io != "float":
            return "TensorRT keeps float model I/O; integer I/O is not offered"
        if recipe.precision == "int8" and recipe.quantization.activations != "int8":
            return (f"{recipe.quantization.activations} activations are not offered: the QDQ graph TensorRT builds from "
                    "has int8 activations")
        if recipe.precision == "int8" and recipe.calibration.method not in CALIBRATION_METHODS:
            return f"calibration method '{recipe.calibration.method}' is not offered (use {', '.join(CALIBRATION_METHODS)})"
        return None

    def export(
        self, source: ModelSource, profile: TargetProfile, recipe: Recipe, calib: Dataset | None, workdir: Path
    ) -> Artifact:
        self.require_support(recipe)
        dla = any(acc.kind == "dla" for acc in profile.accelerators.values()) and recipe.precision in ("fp16", "int8")
        # DLA needs min = opt = max (runtime dims equal build dims): a DLA build ships a static graph.
        dynamic = profile.dynamic_shapes and not dla
        hub = export_onnx(source, workdir.parent / ("_onnx" if dynamic == profile.dynamic_shapes else "_onnx_static"),
                          dynamic=dynamic)
        workdir.mkdir(parents=True, exist_ok=True)
        model = workdir / "model.onnx"
        settings: dict[str, object] = {"dynamic_shapes": dynamic}
        files = [model]
        if recipe.precision == "int8" and not is_prequantized(source):
            quantization = plan(recipe, calib)
            settings |= _quantize_explicit(hub, model, quantization)
            cache = workdir / "calibration.cache"
            write_calibration_cache(cache, _activation_ranges(hub, quantization, workdir))
            files.append(cache)
        else:
            shutil.copyfile(hub, model)
        inputs = tuple(source.inputs if dynamic else [s.with_static_shape() for s in source.inputs])
        outputs = tuple(source.outputs if dynamic else [s.with_static_shape() for s in source.outputs])
        build_from = model.name
        nms = postprocess_settings(source)
        if nms is not None:
            from edgepack.exporters.tensorrt.nms_plugin import PLUGIN_FILE, write_plugin_graph

            raw = source.extra[RAW_OUTPUTS_KEY][0]
            layout, classes, _ = head_layout(tuple(raw.shape), raw.name, source.uri)
            settings["nms_plugin"] = write_plugin_graph(model, workdir / PLUGIN_FILE, nms, layout, classes)
            files.append(workdir / PLUGIN_FILE)
            build_from = PLUGIN_FILE
        command = trtexec_command(profile, recipe, inputs, dla=dla, sparse=_sparse(source), onnx=build_from)
        pin = profile.toolchain.get("tensorrt", "unpinned")
        script = workdir / BUILD_SCRIPT
        script.write_text(_build_script(command, pin))
        script.chmod(0o755)
        files.append(script)
        from edgepack.exporters.tensorrt.engine import build_and_time

        settings["engine_build"] = build_and_time(workdir, command)
        settings |= {"trtexec": shlex.join(command), "tensorrt": pin, "engine": "built on device (not portable)",
                     "dla": dla, "sparsity": _sparse(source)}
        artifact = Artifact(
            target_id=profile.id, runtime=self.runtime, path=model, files=tuple(files), format="onnx-qdq"
            if recipe.precision == "int8" else "onnx", precision=recipe.precision, recipe=recipe.name, inputs=inputs,
            outputs=outputs, toolchain=self.toolchain().versions, converter="onnxruntime.quantization (QDQ)"
            if recipe.precision == "int8" else "torch.onnx", settings=settings,
            notes=("The TensorRT engine is built on the device with build_engine.sh; it is not shipped.",),
        )
        self.embed_contract(artifact, Contract.for_artifact(source, artifact))
        return artifact

    def embed_contract(self, artifact: Artifact, contract: Contract) -> None:
        from edgepack.exporters.onnx.contract import write_onnx_contract

        write_onnx_contract(artifact.path, contract)

    def predictor(self, artifact: Artifact, source: ModelSource) -> Predictor | NotRunnable:
        try:
            return OrtProxyPredictor(artifact.path)
        except ImportError:
            return NotRunnable("needs an NVIDIA GPU with TensorRT; onnxruntime (the CPU proxy) is not installed either")

    def intermediate_values(self, artifact: Artifact, tensors: list[str], feeds: Arrays, *,
                            hub: Path) -> dict[str, np.ndarray]:
        """On the ONNX Runtime proxy, as parity runs: the QDQ graph keeps the source's tensor names."""
        from edgepack.exporters.onnx.hub import onnx_values

        return onnx_values(artifact.path, tensors, feeds)

    def graph_ops(self, path: Path, fmt: str) -> list[GraphOp]:
        return onnx_graph_ops(path)
