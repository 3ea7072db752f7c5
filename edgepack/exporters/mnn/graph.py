"""Placement's view of a .mnn model: one :class:`GraphOp` per op of MNN's ``Net`` in MNN's ``OpType``
vocabulary (``Convolution``, ``Pooling``, ``BinaryOp``, ...), read from MNNConvert's JSON dump of the model."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from edgepack.exporters.mnn.tools import mnn_to_json
from edgepack.targets.placement import GraphOp

NOT_OPS = ("Input", "Const")
"""Op types that declare a graph input or hold a constant rather than compute."""
CONVOLUTIONS = ("Convolution", "ConvolutionDepthwise", "Deconvolution", "DeconvolutionDepthwise")


def _dtype(op: dict[str, Any]) -> str:
    """int8 for convolutions with activation quantization (``symmetricQuan``), else float32 (weight-only int8
    weights are dequantized for float compute)."""
    main = op.get("main") or {}
    return "int8" if op.get("type") in CONVOLUTIONS and isinstance(main.get("symmetricQuan"), dict) else "fp32"


def mnn_graph_ops(path: Path) -> list[GraphOp]:
    """The ops of the .mnn at ``path``."""
    with tempfile.TemporaryDirectory(prefix="edgepack-mnn-json-") as scratch:
        dump = Path(scratch) / "model.json"
        mnn_to_json(path, dump)
        net = json.loads(dump.read_text())
    ops = []
    for index, op in enumerate(net.get("oplists") or []):
        kind = str(op.get("type"))
        if kind in NOT_OPS:
            continue
        common = (op.get("main") or {}).get("common") or {} if kind in CONVOLUTIONS else {}
        ops.append(GraphOp(
            name=str(op.get("name") or f"{kind}_{index}"),
            op_type=kind,
            dtypes=(_dtype(op),),
            kernel=max(common.get("kernelX", 0), common.get("kernelY", 0)) or None if common else None,
            stride=max(common.get("strideX", 1), common.get("strideY", 1)) if common else None,
            dilation=max(common.get("dilateX", 1), common.get("dilateY", 1)) if common else None,
            channels=common.get("outputCount") or None if common else None,
        ))
    return ops
