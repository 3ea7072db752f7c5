"""Which op of an onnx2tf-converted ``.tflite`` computes which source (ONNX) layer, found numerically.

Mixed precision names layers by their source (ONNX) node names; LiteRT's quantizer keeps ops in float
by the names of their output tensors, which onnx2tf derives from TensorFlow scopes
(``model/tf.nn.convolution_3/convolution``), not from ONNX names. Nothing in the converted file
records the correspondence, so it is measured: one calibration sample goes through ONNX Runtime (every
candidate tensor made a graph output) and through the calibrated float ``.tflite`` (every intermediate
tensor preserved, on the builtin kernels because XNNPACK fuses intermediates away), and each layer is
matched to the op whose output equals one of its candidate tensors.

A layer's candidates are its own output and the outputs along its chain of sole consumers that the
converter folds into the op (activation, bias, batch norm, ``Reshape`` after a pool): a fused
``CONV_2D`` with ReLU outputs what the ONNX ``Relu`` after the ``Conv`` does. Tensors are compared in
every layout onnx2tf uses (channel-last for 3-5-D) or squeezed to equal shapes, graph order is kept,
each op is claimed at most once and the op's type must be one that can compute the layer's op type, so
a ReLU that follows an unfused convolution is never taken for it. Layers whose ops onnx2tf decomposes
(e.g. grouped convolutions split into several ``CONV_2D``) stay unmapped, and the exporter says so.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.exporters.onnx.hub import onnx_values
from edgepack.exporters.tflite.model_io import CHANNEL_LAST, _native_stderr_captured

FOLDED_OPS = frozenset(
    {"Relu", "Clip", "Relu6", "Add", "Sub", "Mul", "Div", "BatchNormalization", "Identity", "Reshape", "Flatten",
     "Squeeze", "HardSigmoid", "HardSwish", "Sigmoid", "Tanh", "LeakyRelu"}
)
"""ONNX ops that may be folded into the preceding layer's op or follow it inside one TFLite op."""

TFLITE_OPS_FOR = {
    "Conv": ("CONV_2D", "DEPTHWISE_CONV_2D", "CONV_3D", "FULLY_CONNECTED"),
    "ConvTranspose": ("TRANSPOSE_CONV", "CONV_3D_TRANSPOSE"),
    "Gemm": ("FULLY_CONNECTED", "BATCH_MATMUL"),
    "MatMul": ("FULLY_CONNECTED", "BATCH_MATMUL"),
    "AveragePool": ("AVERAGE_POOL_2D", "MEAN"),
    "GlobalAveragePool": ("AVERAGE_POOL_2D", "MEAN"),
}
"""ONNX layer op type -> TFLite builtin ops that can compute it and that LiteRT's quantizer can keep in
float. ``MaxPool`` is absent: LiteRT's quantizer keeps ``MAX_POOL_2D`` in its input's int8 scale whatever
the denylist says (and max pooling of int8 values is exact anyway)."""

SKIPPED_TFLITE_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})
ATOL = 1e-3
"""Absolute tolerance, scaled by ``max(1, max|reference|)``: float32 TFLite kernels against ORT."""
RTOL = 1e-3


@dataclass(frozen=True)
class LayerMap:
    """Source layer -> output tensor name of the TFLite op that computes it; and the layers left unmapped."""

    tensors: dict[str, str]
    unmapped: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"tensors": dict(self.tensors), "unmapped": list(self.unmapped)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LayerMap":
        return cls(dict(data["tensors"]), tuple(data["unmapped"]))


@dataclass(frozen=True)
class _TfliteOutput:
    position: int
    op: str
    tensor: str
    value: np.ndarray


def candidate_tensors(model: Any, layers: Sequence[str]) -> dict[str, list[str]]:
    """Layer -> its output followed by the outputs along its chain of sole, foldable consumers."""
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in model.graph.output}
    by_name = {node.name: node for node in model.graph.node}
    chains: dict[str, list[str]] = {}
    for layer in layers:
        node = by_name.get(layer)
        if node is None or not node.output:
            continue
        chain = [node.output[0]]
        while chain[-1] not in graph_outputs:
            users = consumers.get(chain[-1], [])
            if len(users) != 1 or users[0].op_type not in FOLDED_OPS or not users[0].output:
                break
            chain.append(users[0].output[0])
        chains[layer] = chain
    return chains


def _builtin_interpreter(tflite_path: Path, *, preserve_all_tensors: bool) -> Any:
    """A one-thread LiteRT interpreter on the builtin kernels (XNNPACK would fuse intermediates away), with
    its tensors allocated."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with _native_stderr_captured():
        interpreter = Interpreter(
            model_path=str(tflite_path),
            num_threads=1,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            experimental_preserve_all_tensors=preserve_all_tensors,
        )
        interpreter.allocate_tensors()
    return interpreter


def tflite_values(
    tflite_path: Path, feeds: Mapping[str, np.ndarray], signature: str | None, *, dequantize: bool = False
) -> list[_TfliteOutput]:
    """Every float op output of ``tflite_path`` for ``feeds`` (keyed by signature input name, artifact
    layout), in execution order, computed by the builtin kernels with all intermediates preserved. With
    ``dequantize``, integer op outputs that carry quantization parameters are included too, as real values."""
    interpreter = _builtin_interpreter(tflite_path, preserve_all_tensors=True)
    if signature is not None:
        indices = {n: d["index"] for n, d in interpreter.get_signature_runner(signature).get_input_details().items()}
    else:
        indices = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    for name, value in feeds.items():
        interpreter.set_tensor(indices[name], value)
    interpreter.invoke()
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    outputs = []
    for position, op in enumerate(interpreter._get_ops_details()):  # noqa: SLF001 - the only op-level view
        if op["op_name"] in SKIPPED_TFLITE_OPS:
            continue
        for index in op["outputs"]:
            if index < 0:
                continue
            value = _real_value(details[index], np.array(interpreter.get_tensor(index))) if dequantize else None
            if value is None and not np.issubdtype(details[index]["dtype"], np.floating):
                continue
            outputs.append(_TfliteOutput(position, op["op_name"], details[index]["name"],
                                         value if value is not None else np.array(interpreter.get_tensor(index))))
    return outputs


def _real_value(detail: Mapping[str, Any], value: np.ndarray) -> np.ndarray | None:
    """A float tensor as it is; an integer one with one scale as ``(q - zero_point) * scale``; else ``None``."""
    if np.issubdtype(value.dtype, np.floating):
        return value
    quant = detail.get("quantization_parameters") or {}
    scales, zero_points = np.asarray(quant.get("scales", ())), np.asarray(quant.get("zero_points", ()))
    if scales.size != 1:
        return None
    return ((value.astype(np.float64) - float(zero_points.reshape(-1)[0] if zero_points.size else 0)) * float(scales[0])
            ).astype(np.float32)


def _layouts(reference: np.ndarray, shape: tuple[int, ...]) -> Iterator[np.ndarray]:
    """``reference`` in each layout onnx2tf may give a tensor of ``shape``."""
    if reference.size != int(np.prod(shape, dtype=np.int64)):
        return
    perms = [tuple(range(reference.ndim))]
    if reference.ndim in CHANNEL_LAST:
        perms.append(CHANNEL_LAST[reference.ndim])
    for perm in perms:
        moved = np.transpose(reference, perm)
        if moved.shape == shape:
            yield moved
    if [d for d in reference.shape if d != 1] == [d for d in shape if d != 1]:
        yield reference.reshape(shape)


def _equal(reference: np.ndarray, actual: np.ndarray) -> bool:
    scale = max(1.0, float(np.max(np.abs(reference))) if reference.size else 1.0)
    return any(np.allclose(moved, actual, rtol=RTOL, atol=ATOL * scale) for moved in _layouts(reference, actual.shape))


def match_layers(
    layers: Sequence[str],
    op_types: Mapping[str, str],
    candidates: Mapping[str, Sequence[str]],
    reference: Mapping[str, np.ndarray],
    outputs: Sequence[_TfliteOutput],
) -> LayerMap:
    """Match each layer (graph order) to the first unclaimed TFLite op of a compatible type whose output
    equals one of the layer's candidate tensors (longest fold first). Constant references match nothing."""
    claimed: set[int] = set()
    mapped: dict[str, str] = {}
    for layer in layers:
        allowed = TFLITE_OPS_FOR.get(op_types.get(layer, ""), ())
        found = None
        for tensor in reversed(list(candidates.get(layer, ()))):
            value = reference.get(tensor)
            if value is None or value.size == 0 or float(np.ptp(value)) == 0.0:
                continue
            found = next(
                (o for o in outputs if o.position not in claimed and o.op in allowed and _equal(value, o.value)),
                None,
            )
            if found is not None:
                break
        if found is not None:
            claimed.add(found.position)
            mapped[layer] = found.tensor
    return LayerMap(mapped, tuple(layer for layer in layers if layer not in mapped))


def float_op_outputs(tflite_path: Path) -> set[str]:
    """Names of the float tensors that ops other than ``DEQUANTIZE`` write in ``tflite_path``: the ops a
    mixed-precision model really computes in float."""
    interpreter = _builtin_interpreter(tflite_path, preserve_all_tensors=False)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    return {
        details[index]["name"]
        for op in interpreter._get_ops_details()  # noqa: SLF001 - the only op-level view
        if op["op_name"] != "DEQUANTIZE"
        for index in op["outputs"]
        if index >= 0 and np.issubdtype(details[index]["dtype"], np.floating)
    }


def map_layers(
    onnx_path: Path,
    layers: Sequence[str],
    tflite_path: Path,
    onnx_feeds: Mapping[str, np.ndarray],
    tflite_feeds: Mapping[str, np.ndarray],
    signature: str | None,
) -> LayerMap:
    """Map ``layers`` (ONNX node names of ``onnx_path``) onto the ops of ``tflite_path`` (a float or
    calibrated-float conversion of it) with one sample fed to both."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    op_types = {node.name: node.op_type for node in model.graph.node}
    candidates = candidate_tensors(model, layers)
    reference = onnx_values(onnx_path, [t for chain in candidates.values() for t in chain], onnx_feeds)
    outputs = tflite_values(tflite_path, tflite_feeds, signature)
    return match_layers(layers, op_types, candidates, reference, outputs)
