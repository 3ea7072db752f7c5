"""Placement's view of an ncnn model: one :class:`GraphOp` per ``.param`` layer, in ncnn's layer-type vocabulary."""

from __future__ import annotations

from pathlib import Path

from edgepack.exporters.ncnn.param import read_param
from edgepack.targets.placement import GraphOp

NOT_OPS = ("Input",)
"""Layer types that declare a graph input rather than compute."""
CONVOLUTIONS = ("Convolution", "ConvolutionDepthWise", "Deconvolution", "DeconvolutionDepthWise")


def ncnn_graph_ops(path: Path) -> list[GraphOp]:
    """The layers of the ``.param`` at ``path``; int8 for layers with an ``int8_scale_term``, else float32."""
    ops = []
    for layer in read_param(path):
        if layer.type in NOT_OPS:
            continue
        dtype = "int8" if layer.int_param(8, 0) and layer.type in (*CONVOLUTIONS, "InnerProduct") else "fp32"
        conv = layer.type in CONVOLUTIONS
        ops.append(GraphOp(
            layer.name, layer.type, (dtype,),
            kernel=layer.int_param(1, 0) or None if conv else None,
            stride=layer.int_param(3, 1) if conv else None,
            dilation=layer.int_param(2, 1) if conv else None,
            channels=layer.int_param(0, 0) or None if conv else None,
        ))
    return ops
