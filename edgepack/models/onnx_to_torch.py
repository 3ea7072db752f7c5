"""ONNX -> ``torch.nn.Module`` (``onnx2torch``) for runtimes whose converters take PyTorch only (Core ML).

Real third-party ONNX files need a normalisation pass before ``onnx2torch.convert`` accepts them:

* input dims fixed to the given specs (``TensorSpec.concrete_shape(1)``), graph inputs in the specs' order;
* initializers that are also listed as graph inputs (old exporters) dropped from the inputs;
* ``Constant`` nodes hoisted into initializers: paddle2onnx stores every weight as a ``Constant`` node, and
  onnx2torch reads Conv/BatchNorm weights from ``graph.initializer`` only;
* ``auto_pad = SAME_UPPER | SAME_LOWER`` on Conv and pooling nodes rewritten to explicit ``pads``, computed
  from the input shapes that ONNX shape inference gives once the input dims are fixed (onnx2torch raises
  ``NotImplementedError`` on SAME padding).

The converted module is run once against ONNX Runtime on the original file (same inputs) and accepted only
when every output matches within :data:`MAX_REL_ERROR`; every failure is one line naming the node, its op
and the converter's own message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgepack._text import first_line
from edgepack.errors import ExportError, UnsupportedError
from edgepack.models.source import TensorSpec

MAX_REL_ERROR = 1e-4
"""Largest ``max|torch - ORT| / max(|ORT|, 1e-6)`` accepted per output (ten times tighter than fp32 parity)."""
SAME_PADDED_OPS = frozenset({"Conv", "MaxPool", "AveragePool", "LpPool"})
"""Ops whose ``auto_pad = SAME_*`` is rewritten to explicit pads (ConvTranspose's SAME is another formula)."""
VERIFY_SEED = 0


@dataclass(frozen=True)
class TorchFromOnnx:
    """A torch module converted from an ONNX file, and what was done to get it."""

    module: Any
    """``torch.fx.GraphModule`` in eval mode; positional inputs in the specs' order, outputs in graph order."""
    rewrites: tuple[str, ...]
    """Normalisation steps that changed the graph (e.g. ``"3 auto_pad SAME_UPPER -> explicit pads"``)."""
    max_rel_error: float
    """Worst output's relative error against ONNX Runtime on the verification input."""
    output_shapes: tuple[tuple[int, ...], ...] = ()
    """Concrete output shapes for the fixed inputs (the ONNX file may declare symbolic output dims)."""

    def describe(self) -> dict[str, Any]:
        return {"converter": "onnx2torch", "rewrites": list(self.rewrites),
                "verified_against": "onnxruntime (CPU), one synthetic input",
                "max_rel_error": self.max_rel_error, "tolerance": MAX_REL_ERROR}


def _fix_inputs(model: Any, specs: Sequence[TensorSpec]) -> list[str]:
    """Drop initializer duplicates from ``graph.input``, fix the dims and order of the real inputs."""
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    duplicated = [i for i in graph.input if i.name in initializers]
    real = {i.name: i for i in graph.input if i.name not in initializers}
    names = [spec.name for spec in specs]
    if sorted(names) != sorted(real):
        raise ExportError(f"input specs {names} do not name the ONNX graph's inputs {sorted(real)}")
    ordered = []
    for spec in specs:
        value = real[spec.name]
        dims = value.type.tensor_type.shape.dim
        shape = spec.concrete_shape(1)
        if len(dims) != len(shape):
            raise ExportError(f"input {spec.name} has rank {len(dims)} in the ONNX graph, the spec says {len(shape)}")
        for dim, size in zip(dims, shape):
            dim.Clear()
            dim.dim_value = size
        ordered.append(value)
    copies = [type(v)() for v in ordered]
    for copy, value in zip(copies, ordered):
        copy.CopyFrom(value)
    del graph.input[:]
    graph.input.extend(copies)
    return [f"{len(duplicated)} initializers dropped from the graph inputs"] if duplicated else []


def _constant_tensor(node: Any) -> Any | None:
    """The tensor a top-level ``Constant`` node produces, or None for sparse/string constants."""
    from onnx import TensorProto, numpy_helper

    if len(node.attribute) != 1:
        return None
    attribute = node.attribute[0]
    name = node.output[0]
    if attribute.name == "value":
        tensor = TensorProto()
        tensor.CopyFrom(attribute.t)
        tensor.name = name
        return tensor
    values = {
        "value_float": lambda a: np.array(a.f, np.float32),
        "value_floats": lambda a: np.array(list(a.floats), np.float32),
        "value_int": lambda a: np.array(a.i, np.int64),
        "value_ints": lambda a: np.array(list(a.ints), np.int64),
    }
    if attribute.name in values:
        return numpy_helper.from_array(values[attribute.name](attribute), name)
    return None  # string/sparse constants stay nodes (onnx2torch converts what it can)


def _hoist_constants(model: Any) -> list[str]:
    """Top-level ``Constant`` nodes whose output is not a graph output become initializers."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    keep, hoisted = [], []
    for node in graph.node:
        tensor = _constant_tensor(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        if tensor is None or node.output[0] in outputs:
            keep.append(node)
        else:
            hoisted.append(tensor)
    if not hoisted:
        return []
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(hoisted)
    return [f"{len(hoisted)} Constant nodes -> initializers"]


def same_pads(mode: str, in_sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
              dilations: Sequence[int]) -> list[int]:
    """Explicit ONNX ``pads`` (all begins, then all ends) equal to ``auto_pad = mode`` for these sizes.

    Output size is ``ceil(in / stride)``; the total padding is split evenly, the odd element going to the end
    for ``SAME_UPPER`` and to the beginning for ``SAME_LOWER`` (ONNX operator spec)."""
    begins, ends = [], []
    for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if mode == "SAME_UPPER" else large)
        ends.append(large if mode == "SAME_UPPER" else small)
    return begins + ends


def _rewrite_same_padding(model: Any) -> list[str]:
    """``auto_pad = SAME_*`` -> explicit ``pads`` on :data:`SAME_PADDED_OPS`, from inferred input shapes."""
    from onnx import helper, shape_inference

    graph = model.graph
    targets = [n for n in graph.node if any(a.name == "auto_pad" and a.s.decode() in ("SAME_UPPER", "SAME_LOWER")
                                            for a in n.attribute)]
    if not targets:
        return []
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    shapes: dict[str, list[int | None]] = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    weights = {init.name: list(init.dims) for init in graph.initializer}
    modes: dict[str, int] = {}
    for node in targets:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        mode = attrs["auto_pad"].decode()
        label = f"node '{node.name or node.output[0]}' ({node.op_type})"
        if node.op_type not in SAME_PADDED_OPS:
            raise UnsupportedError(f"{label}: auto_pad={mode} is not rewritten for {node.op_type} "
                                   f"(onnx2torch: \"{mode}\" auto_pad is not implemented)")
        shape = shapes.get(node.input[0])
        if not shape or any(d is None for d in shape[2:]):
            raise ExportError(f"{label}: auto_pad={mode} needs the input's spatial size, which shape inference "
                              f"left unknown ({shape}) even with the input dims fixed")
        spatial = shape[2:]
        if "kernel_shape" in attrs:
            kernel = list(attrs["kernel_shape"])
        elif node.op_type == "Conv" and node.input[1] in weights:
            kernel = weights[node.input[1]][2:]
        else:
            raise ExportError(f"{label}: auto_pad={mode} needs a kernel_shape attribute or an initializer weight")
        rank = len(kernel)
        pads = same_pads(mode, spatial, kernel, attrs.get("strides", [1] * rank), attrs.get("dilations", [1] * rank))
        kept = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("pads", pads)])
        modes[mode] = modes.get(mode, 0) + 1
    return [f"{count} auto_pad {mode} -> explicit pads" for mode, count in sorted(modes.items())]


def normalise(model: Any, specs: Sequence[TensorSpec]) -> tuple[Any, list[str]]:
    """A copy of ``model`` (``onnx.ModelProto``) that ``onnx2torch.convert`` accepts, and the rewrites made."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    rewrites = _fix_inputs(out, specs) + _hoist_constants(out) + _rewrite_same_padding(out)
    return out, rewrites


def _failing_node(model: Any) -> str | None:
    """Re-run onnx2torch's per-node converters to name the node a failed ``convert`` stopped at."""
    from onnx2torch.node_converters import get_converter
    from onnx2torch.onnx_graph import OnnxGraph
    from onnx2torch.utils.safe_shape_inference import safe_shape_inference

    opsets = {entry.domain: entry.version for entry in model.opset_import}
    graph = OnnxGraph(safe_shape_inference(model).graph)
    for name, node in graph.nodes.items():
        try:
            version = opsets.get(node.domain, opsets.get("ai.onnx", opsets.get("", 1)))
            get_converter(domain=node.domain, operation_type=node.operation_type, version=version)(node, graph)
        except Exception as exc:  # noqa: BLE001 - the converter's own message is the report
            return f"node '{name}' ({node.operation_type}, opset {version}): {first_line(exc, typed=True)}"
    return None


def _convert(model: Any) -> Any:
    from onnx2torch import convert

    try:
        return convert(model).eval()
    except Exception as exc:  # noqa: BLE001 - reported with the node that failed
        where = _failing_node(model)
        message = where or first_line(exc, typed=True)
        error = UnsupportedError if isinstance(exc, NotImplementedError) or (where and "NotImplemented" in where) \
            else ExportError
        raise error(f"onnx2torch cannot convert the ONNX graph: {message}") from None


def _verify(module: Any, path: Path, specs: Sequence[TensorSpec]) -> tuple[float, tuple[tuple[int, ...], ...]]:
    """Worst relative error of ``module`` against ONNX Runtime on one synthetic input (raise past tolerance),
    and the output shapes."""
    import onnxruntime as ort
    import torch

    from edgepack.models.sample import example_inputs

    arrays = example_inputs(specs, batch=1, seed=VERIFY_SEED)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    reference = session.run(None, arrays)
    try:
        with torch.inference_mode():
            result = module(*(torch.from_numpy(arrays[s.name]) for s in specs))
    except Exception as exc:  # noqa: BLE001 - a module that does not run is a conversion failure
        raise ExportError(f"the onnx2torch module fails to run: {first_line(exc, typed=True)}") from None
    results = list(result) if isinstance(result, (list, tuple)) else [result]
    if len(results) != len(reference):
        raise ExportError(f"the onnx2torch module returns {len(results)} outputs, the ONNX graph has {len(reference)}")
    worst = 0.0
    for name, got, want in zip(names, results, reference):
        got = got.detach().numpy()
        if got.shape != want.shape:
            raise ExportError(f"onnx2torch output {name} has shape {list(got.shape)}, ONNX Runtime gives "
                              f"{list(want.shape)}")
        if want.size == 0:
            continue
        error = float(np.max(np.abs(got.astype(np.float64) - want))) / max(float(np.max(np.abs(want))), 1e-6)
        if not error <= MAX_REL_ERROR:
            raise ExportError(f"onnx2torch output {name} differs from ONNX Runtime: max rel error {error:.2e} "
                              f"> {MAX_REL_ERROR:.0e}")
        worst = max(worst, error)
    return worst, tuple(tuple(int(d) for d in want.shape) for want in reference)


def onnx_to_torch(path: Path | str, specs: Sequence[TensorSpec]) -> TorchFromOnnx:
    """Convert the ONNX file at ``path`` to a torch module for inputs ``specs`` (symbolic dims -> batch 1).

    Raises :class:`UnsupportedError` (an op or padding mode onnx2torch lacks) or :class:`ExportError` (any other
    conversion failure, or outputs that differ from ONNX Runtime), each one line naming the node."""
    import torch  # noqa: F401 - torch before onnx2torch pulls anything else in
    import onnx

    path = Path(path)
    model, rewrites = normalise(onnx.load(str(path)), specs)
    module = _convert(model)
    error, shapes = _verify(module, path, specs)
    return TorchFromOnnx(module, tuple(rewrites), error, shapes)
