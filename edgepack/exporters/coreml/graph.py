"""Static checks of a Core ML mlprogram: its MIL ops for the ANE placement check, its I/O and its compression.

Everything here reads the model spec (``.mlmodel`` protobuf inside the ``.mlpackage``) with coremltools'
proto classes, so it works on Linux where Core ML cannot load the model. The ANE op table itself is data
(``[accelerators.ane.ops]`` in the Apple profiles, with its sources); :func:`mil_graph_ops` only reports the
facts the table's constraints look at. On macOS, :func:`compute_plan_counts` asks Core ML's own
``MLComputePlan`` where each op would run.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgepack.targets.placement import GraphOp

WEIGHT_OPS = ("const",)
"""Ops that hold data rather than compute (constexpr_* decompression ops are matched by prefix)."""
COMPRESSION_OPS = {
    "constexpr_lut_to_dense": "palettized",
    "constexpr_sparse_to_dense": "sparse",
    "constexpr_affine_dequantize": "linear_quantized",
    "constexpr_blockwise_shift_scale": "linear_quantized",
    "constexpr_sparse_blockwise_shift_scale": "sparse",
    "quantize": "activation_quantized",
}
"""constexpr op (iOS16 and iOS18 spellings) or activation ``quantize`` op -> compression kind."""
_MIL_DTYPES = {"FLOAT16": "fp16", "FLOAT32": "fp32", "FLOAT64": "fp64", "BFLOAT16": "bf16", "INT8": "int8",
               "UINT8": "uint8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "BOOL": "bool", "INT4": "int4",
               "UINT4": "uint4"}
_FEATURE_DTYPES = {65552: "float16", 65568: "float32", 65600: "float64", 131104: "int32", 131080: "int8"}
"""ArrayFeatureType.ArrayDataType enum values -> edgepack dtype names."""


PACKAGE = "model.mlpackage"
DESCRIPTOR = "coreml.json"
"""Beside the package: the spec's hash and the static check's findings."""


def import_coremltools() -> Any:
    """``coremltools``, imported after ``torch._dynamo``: coremltools imports TensorFlow, and TensorFlow before
    ``torch._dynamo`` segfaults on these machines."""
    import torch._dynamo  # noqa: F401

    import coremltools

    return coremltools


def spec_path(path: Path) -> Path:
    """The ``.mlmodel`` spec of a ``.mlpackage``, of the package a ``coreml.json`` descriptor sits beside, or
    ``path`` itself when it is that file."""
    if path.suffix == ".json":
        path = path.with_name(PACKAGE)
    if path.suffix == ".mlpackage":
        return path / "Data" / "com.apple.CoreML" / "model.mlmodel"
    return path


def load_spec(path: Path) -> Any:
    """The ``Model`` protobuf of an mlpackage or its .mlmodel file (no Core ML runtime needed)."""
    import_coremltools()
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path(path).read_bytes())
    return spec


def _main_block(spec: Any) -> Any:
    function = spec.mlProgram.functions["main"]
    return function.block_specializations[function.opset]


def _walk(block: Any) -> Iterator[Any]:
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _walk(inner)


def _tensor(value_type: Any) -> tuple[str, int, bool, list[int | None]] | None:
    if not value_type.HasField("tensorType"):
        return None
    from coremltools.proto import MIL_pb2

    tensor = value_type.tensorType
    dims = [d.constant.size if d.HasField("constant") else None for d in tensor.dimensions]
    dtype = _MIL_DTYPES.get(MIL_pb2.DataType.Name(tensor.dataType), "other")
    return dtype, tensor.rank, all(d is not None for d in dims), dims


def _const_values(ops: list[Any]) -> dict[str, list[int]]:
    """Small integer constants (strides, dilations) by name."""
    values = {}
    for op in ops:
        if op.type == "const" and "val" in op.attributes:
            ints = op.attributes["val"].immediateValue.tensor.ints.values
            if ints:
                values[op.outputs[0].name] = list(ints)
    return values


def _is_data(op_type: str) -> bool:
    return op_type in WEIGHT_OPS or op_type.startswith("constexpr_")


def mil_graph_ops(path: Path) -> list[GraphOp]:
    """The compute ops of an mlprogram's main function (constants and constexpr decompression excluded), with
    the dtype of their non-constant tensor inputs, rank, static-ness and conv kernel/stride/dilation."""
    spec = load_spec(path)
    function = spec.mlProgram.functions["main"]
    ops = list(_walk(_main_block(spec)))
    produced: dict[str, tuple[str, int, bool, list[int | None]]] = {}
    for value in function.inputs:
        info = _tensor(value.type)
        if info:
            produced[value.name] = info
    data = {out.name for op in ops if _is_data(op.type) for out in op.outputs}
    consts = _const_values(ops)
    shapes = {out.name: _tensor(out.type) for op in ops for out in op.outputs}
    result = []
    for index, op in enumerate(ops):
        if _is_data(op.type):
            continue
        infos, args = [], {}
        for key, argument in op.inputs.items():
            names = [b.name for b in argument.arguments if b.name]
            args[key] = names
            infos += [produced[n] for n in names if n in produced and n not in data]
        outputs = [info for info in (_tensor(out.type) for out in op.outputs) if info]
        for out, info in zip(op.outputs, outputs):
            produced[out.name] = info
        facts = infos or outputs
        weight = shapes.get(args.get("weight", [""])[0]) if op.type in ("conv", "conv_transpose") else None
        strides = consts.get(args.get("strides", [""])[0])
        dilations = consts.get(args.get("dilations", [""])[0])
        result.append(GraphOp(
            name=op.outputs[0].name if op.outputs else f"{op.type}_{index}",
            op_type=op.type,
            dtypes=tuple(sorted({dtype for dtype, *_ in facts})),
            rank=max((rank for _, rank, *_ in infos + outputs), default=None),
            static=all(static for _, _, static, _ in infos + outputs),
            kernel=max((d or 0 for d in weight[3][2:]), default=None) if weight else None,
            stride=max(strides) if strides else None,
            dilation=max(dilations) if dilations else None,
            channels=weight[3][0] if weight and weight[3] else None,
        ))
    return result


def compression_ops(path: Path) -> dict[str, int]:
    """How many constexpr decompression ops (and activation ``quantize`` ops) of each kind the program holds
    (``{"palettized": 3, ...}``)."""
    counts: Counter[str] = Counter()
    for op in _walk(_main_block(load_spec(path))):
        if op.type in COMPRESSION_OPS:
            counts[COMPRESSION_OPS[op.type]] += 1
    return dict(counts)


def io_description(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Inputs and outputs as the model description states them: name, dtype, default shape, flexible shapes."""
    spec = load_spec(path)

    def describe(feature: Any) -> dict[str, Any]:
        array = feature.type.multiArrayType
        entry: dict[str, Any] = {"name": feature.name, "dtype": _FEATURE_DTYPES.get(array.dataType, "other"),
                                 "shape": list(array.shape)}
        if array.HasField("shapeRange"):
            entry["ranges"] = [[r.lowerBound, r.upperBound] for r in array.shapeRange.sizeRanges]
        elif array.HasField("enumeratedShapes"):
            entry["enumerated"] = [list(s.shape) for s in array.enumeratedShapes.shapes]
        return entry

    return {"inputs": [describe(f) for f in spec.description.input],
            "outputs": [describe(f) for f in spec.description.output]}


def deployment_opset(path: Path) -> str:
    """The opset (e.g. ``CoreML7`` = iOS 17 / macOS 14) of the main function."""
    return load_spec(path).mlProgram.functions["main"].opset


def compute_plan_counts(package: Path) -> dict[str, int] | None:
    """Core ML's own per-op device choice (``{"ane": n, "gpu": n, "cpu": n}``) via ``MLComputePlan``.

    Needs macOS (Core ML compiles and plans the model); ``None`` elsewhere or when coremltools lacks it."""
    if sys.platform != "darwin":
        return None
    try:
        ct = import_coremltools()
        from coremltools.models.compute_plan import MLComputePlan
        from coremltools.models.compute_device import MLCPUComputeDevice, MLGPUComputeDevice

        compiled = ct.utils.compile_model(str(package))
        plan = MLComputePlan.load_from_path(path=compiled, compute_units=ct.ComputeUnit.ALL)
        program = plan.model_structure.program
        counts: Counter[str] = Counter()
        for operation in program.functions["main"].block.operations:
            usage = plan.get_compute_device_usage_for_mlprogram_operation(operation)
            if usage is None:
                continue
            device = usage.preferred_compute_device
            counts["cpu" if isinstance(device, MLCPUComputeDevice) else
                   "gpu" if isinstance(device, MLGPUComputeDevice) else "ane"] += 1
        return dict(counts)
    except Exception:  # noqa: BLE001 - the static check stands when Core ML's plan is unavailable
        return None
