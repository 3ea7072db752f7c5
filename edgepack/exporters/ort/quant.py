"""ONNX Runtime quantization in the layout that is fast on CPU: ``quant_pre_process`` (shape inference + graph
optimisation) first, then QDQ with uint8 activations and int8 per-channel weights (the peers' default, QDQ S8S8
per-tensor without pre-processing, is slower than fp32; docs/benchmarks.md has the side-by-side ratios). Without
VNNI, weights use ``reduce_range`` (7-bit) to avoid the u8*s8 saturation of AVX2 kernels.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.compress.quantize import QuantizationPlan, has_vnni

CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile", "mse": "MinMax"}
"""edgepack method -> ONNX Runtime CalibrationMethod (mse: ranges from :mod:`edgepack.compress.calibration`,
handed to ORT as per-tensor overrides on top of a min-max pass)."""


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over edgepack calibration batches."""

    def __init__(self, plan: QuantizationPlan) -> None:
        self._batches = iter(plan.calibration_batches())

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:  # pragma: no cover - part of the protocol, unused by ORT's static flow
        raise NotImplementedError


def unsupported_reason(plan: QuantizationPlan) -> str | None:
    """Why ONNX Runtime cannot apply this plan, or ``None``."""
    if plan.recipe.precision == "int4-weight":
        if plan.recipe.weight_only.method != "rtn":
            return f"weight-only method '{plan.recipe.weight_only.method}' is not offered by ONNX Runtime's MatMulNBits quantizer"
        return None
    method = plan.recipe.calibration.method
    if plan.static and method not in CALIBRATION_METHODS:
        return f"calibration method '{method}' is not offered by ONNX Runtime (use {', '.join(CALIBRATION_METHODS)})"
    if plan.recipe.quantization.activations == "int16":
        return "int16 activations are not implemented for onnxruntime"
    if plan.recipe.quantization.io != "float":
        return "integer model I/O is not implemented for onnxruntime"
    return None


def _excluded_nodes(model_path: Path, names: tuple[str, ...]) -> list[str]:
    """Node names matching any exclude entry exactly or as a prefix of a scoped name (``/layer1/...``)."""
    if not names:
        return []
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    keep = []
    for node in graph.node:
        if any(node.name == n or node.name.startswith(n.rstrip("/") + "/") or f"/{n}/" in node.name for n in names):
            keep.append(node.name)
    return keep


def quantize(src: Path, dst: Path, plan: QuantizationPlan) -> dict[str, object]:
    """Write the quantized model to ``dst``; return the settings actually used."""
    with _quiet_root_logger():
        if plan.recipe.precision == "int4-weight":
            return _weight_only(src, dst, plan)
        return _int8(src, dst, plan)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantizers log advice through the root logger; keep it off the user's terminal."""
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")]
    previous = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, previous):
            logger.setLevel(level)


def mse_overrides(model: Path, plan: QuantizationPlan, symmetric: bool) -> dict[str, list[dict[str, object]]]:
    """Per-activation ``rmin``/``rmax`` minimising the quantization MSE, from histograms of the calibration data."""
    import tempfile

    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from edgepack.compress.calibration import mse_range

    with tempfile.TemporaryDirectory(prefix="edgepack-mse-") as scratch:
        calibrator = create_calibrator(model, None, augmented_model_path=str(Path(scratch) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.Percentile,
                                       extra_options={"symmetric": True, "num_bins": 2048})
        with contextlib.redirect_stdout(io.StringIO()):  # ORT prints progress; stdout belongs to the CLI (--json)
            calibrator.collect_data(_Reader(plan))
        histograms = dict(calibrator.collector.histogram_dict)
    overrides: dict[str, list[dict[str, object]]] = {}
    for tensor, (hist, edges, minimum, maximum) in histograms.items():
        low, high = mse_range(hist, edges, float(minimum), float(maximum), symmetric=symmetric)
        if high > low:
            overrides[tensor] = [{"rmin": np.float32(low), "rmax": np.float32(high)}]
    return overrides


def pre_process_in_workdir(pre_process: Any, src: Path, prepared: Path, **options: Any) -> None:
    """ONNX Runtime's ``quant_pre_process``, run with ``prepared``'s folder as the working directory: its
    symbolic shape inference saves ``sym_shape_infer_temp.onnx`` and a weight copy into the *current*
    directory when inference is incomplete; they must land in edgepack's scratch dir, not the user's."""
    source, target = src.absolute(), prepared.absolute()
    with contextlib.chdir(target.parent):
        pre_process(str(source), str(target), **options)


def _int8(src: Path, dst: Path, plan: QuantizationPlan) -> dict[str, object]:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    prepared = dst.with_name("preprocessed.onnx")
    pre_process_in_workdir(quant_pre_process, src, prepared, skip_symbolic_shape=False)
    excluded = _excluded_nodes(prepared, plan.exclude)
    q = plan.recipe.quantization
    reduce_range = not has_vnni()
    if not plan.static:
        quantize_dynamic(
            str(prepared), str(dst), weight_type=QuantType.QInt8, per_channel=q.per_channel,
            reduce_range=reduce_range, nodes_to_exclude=excluded,
        )
        prepared.unlink()
        return {"mode": "dynamic", "weights": "int8", "per_channel": q.per_channel, "reduce_range": reduce_range,
                "excluded_nodes": excluded}
    method = plan.recipe.calibration.method
    extra: dict[str, object] = {"CalibPercentile": plan.recipe.calibration.percentile} if method == "percentile" else {}
    if method == "mse":
        extra["TensorQuantOverrides"] = mse_overrides(prepared, plan, q.symmetric_activations)
    activation_type = QuantType.QInt8 if q.symmetric_activations else QuantType.QUInt8
    quantize_static(
        str(prepared), str(dst), _Reader(plan), quant_format=QuantFormat.QDQ, per_channel=q.per_channel,
        reduce_range=reduce_range, activation_type=activation_type, weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]), nodes_to_exclude=excluded,
        extra_options={"ActivationSymmetric": q.symmetric_activations, **extra},
    )
    prepared.unlink()
    return {
        "mode": "static-qdq", "activations": activation_type.name, "weights": "QInt8", "per_channel": q.per_channel,
        "reduce_range": reduce_range, "calibration": method, "calibration_samples": plan.recipe.calibration.samples,
        "excluded_nodes": excluded,
    }


def _matmul_weights(model: object) -> dict[str, np.ndarray]:
    """MatMul node name -> its constant weight ([K, N]) for every MatMul with an initializer weight."""
    from onnx import numpy_helper

    graph = model.graph  # type: ignore[attr-defined]
    initializers = {init.name: init for init in graph.initializer}
    return {
        node.name: numpy_helper.to_array(initializers[node.input[1]])
        for node in graph.node
        if node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in initializers
    }


def _weight_only(src: Path, dst: Path, plan: QuantizationPlan) -> dict[str, object]:
    """Group-wise low-bit weights as ``MatMulNBits`` / ``GatherBlockQuantized`` (ONNX Runtime's own blockwise
    round-to-nearest quantizer; its separate ``RTNWeightOnlyQuantConfig`` path failed on MiniLM here with a
    reshape error). Embedding Gathers become ``GatherBlockQuantized``. With ``ratio`` < 1 the MatMuls with the
    largest int4 error are stored as 8-bit blocks instead (mixed int4/int8, as NNCF does for OpenVINO)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    from edgepack.compress.weight_only import int8_backup_layers

    config = plan.recipe.weight_only
    model = onnx.load(str(src))
    excluded = _excluded_nodes(src, plan.exclude)
    weights = {k: v for k, v in _matmul_weights(model).items() if k not in excluded}
    backup = int8_backup_layers(weights, ratio=config.ratio, group_size=config.group_size, symmetric=config.symmetric,
                                bits=config.bits)

    def run(model: object, bits: int, ops: tuple[str, ...], **selection: object) -> object:
        quantizer = MatMulNBitsQuantizer(
            model, bits=bits, block_size=config.group_size, is_symmetric=config.symmetric, op_types_to_quantize=ops,
            algo_config=DefaultWeightOnlyQuantConfig(
                block_size=config.group_size, is_symmetric=config.symmetric, bits=bits, op_types_to_quantize=ops
            ),
            **selection,
        )
        quantizer.process()
        return quantizer.model.model

    model = run(model, config.bits, ("MatMul", "Gather"), nodes_to_exclude=excluded + backup)
    if backup:
        model = run(model, 8, ("MatMul",), nodes_to_include=backup)
    onnx.save(model, str(dst))
    return {"mode": "weight-only", "op": "MatMulNBits", "bits": config.bits, "group_size": config.group_size,
            "symmetric": config.symmetric, "method": "rtn", "ratio": config.ratio, "int8_layers": backup,
            "excluded_nodes": excluded}
