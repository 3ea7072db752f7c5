"""ncnn int8 models from a float ``.param`` + ``.bin`` and a calibration table, as ``ncnn2int8`` writes them.

Convolution and InnerProduct layers get ``int8_scale_term = 2``, ConvolutionDepthWise ``1``; their weights are
stored as int8 (ncnn's int8 tag) followed by the bias, the weight scales and the input-blob scale. Every other
layer's weights are copied unchanged. The pip ``ncnn`` and ``pnnx`` packages ship neither ``ncnn2table`` nor
``ncnn2int8``, so both steps run here, on ncnn's own loaders (:mod:`edgepack.exporters.ncnn.weights`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepack.errors import ExportError
from edgepack.exporters.ncnn.calibration import CalibrationTable, weight_scales
from edgepack.exporters.ncnn.param import Layer, read_param, write_param
from edgepack.exporters.ncnn.weights import int8_tagged, layer_ranges, read_raw, read_tagged

SCALE_TERM = {"Convolution": 2, "ConvolutionDepthWise": 1, "InnerProduct": 2}
"""``int8_scale_term`` ncnn2int8 writes per layer type (depthwise: one weight scale per group)."""


def _weight_count(layer: Layer) -> int:
    return layer.int_param(2, 0) if layer.type == "InnerProduct" else layer.int_param(6, 0)


def float_weights(layer: Layer, data: bytes, start: int) -> np.ndarray:
    """The float weights of a Convolution / ConvolutionDepthWise / InnerProduct layer starting at ``start``."""
    return read_tagged(data, start, _weight_count(layer))[0]


def quantize_int8(value: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``round(value * scale)`` per row, half away from zero, saturated to [-127, 127] (ncnn's float2int8)."""
    scaled = value.reshape(len(scales), -1) * scales[:, None].astype(np.float32)
    return np.clip(np.trunc(scaled + np.copysign(0.5, scaled)), -127, 127).astype(np.int8).reshape(-1)


def _quantized_layer(layer: Layer, data: bytes, start: int, weights: np.ndarray, activation: float) -> bytes:
    values, consumed = read_tagged(data, start, _weight_count(layer))
    out = [int8_tagged(quantize_int8(values, weights))]
    if layer.int_param(1 if layer.type == "InnerProduct" else 5, 0):  # bias_term
        out.append(read_raw(data, start + consumed, layer.int_param(0, 0)).tobytes())
    out.append(weights.astype(np.float32).tobytes())
    out.append(np.float32(activation).tobytes())
    return b"".join(out)


def write_int8(param: Path, bin_path: Path, table: CalibrationTable, out_param: Path, out_bin: Path) -> list[str]:
    """Write the int8 model of ``param``/``bin_path`` for ``table``; return the names of the quantized layers."""
    layers = read_param(param)
    data = bin_path.read_bytes()
    ranges = layer_ranges(param, data)
    chunks: list[bytes] = []
    quantized: list[str] = []
    for layer, (start, end) in zip(layers, ranges):
        if layer.name in table.weights and layer.name in table.activations:
            scales, activation = table.weights[layer.name], table.activations[layer.name]
            chunks.append(_quantized_layer(layer, data, start, scales, activation))
            layer.params[8] = str(SCALE_TERM[layer.type])
            quantized.append(layer.name)
        else:
            chunks.append(data[start:end])
    write_param(out_param, layers)
    out_bin.write_bytes(b"".join(chunks))
    written = [end - start for start, end in layer_ranges(out_param, out_bin.read_bytes())]
    if written != [len(chunk) for chunk in chunks]:  # ncnn's loaders must read back exactly what was written
        raise ExportError("the int8 .bin does not match its .param (ncnn reads other byte counts per layer)")
    return quantized


def table_weights(layers: list[Layer], param: Path, bin_path: Path, *, per_channel: bool) -> dict[str, np.ndarray]:
    """Weight scales of ``layers`` (a subset of the model at ``param``/``bin_path``)."""
    data = bin_path.read_bytes()
    starts = {layer.name: start for layer, (start, _end) in zip(read_param(param), layer_ranges(param, data))}
    return {layer.name: weight_scales(layer, float_weights(layer, data, starts[layer.name]), per_channel=per_channel)
            for layer in layers}
