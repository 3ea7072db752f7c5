"""The source (ONNX hub) tensors as a ``.tflite`` artifact computes them, for the first-divergent-layer report.

An artifact that failed parity no longer equals its source, so its ops cannot be matched to the source's layers
by value (what :mod:`edgepack.exporters.tflite.layers` does for mixed precision on an intact conversion). They
are matched by structure instead: source layers in graph order, each to the next unclaimed LiteRT op of a type
that can compute it and an output of the layer's shape in one of onnx2tf's layouts (channel-last, squeezed),
preferring ops after the previous match. Within the layer's chain of folded consumers (``Conv`` -> ``Relu``),
the tensor nearest the op's output (cosine) is the one the op computes. Integer outputs of quantized ops are
dequantized with their own scale, and values are moved back to the source layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.exporters.onnx.hub import onnx_values
from edgepack.exporters.tflite.layers import TFLITE_OPS_FOR, _TfliteOutput, candidate_tensors, tflite_values
from edgepack.exporters.tflite.model_io import CHANNEL_LAST, TflitePredictor
from edgepack.parity import cosine


def to_source_layout(reference: np.ndarray, actual: np.ndarray) -> np.ndarray | None:
    """``actual`` (an op output) in ``reference``'s layout, or ``None`` when no onnx2tf layout relates them."""
    if reference.size != actual.size:
        return None
    perms = [tuple(range(reference.ndim))]
    if reference.ndim in CHANNEL_LAST:
        perms.append(CHANNEL_LAST[reference.ndim])
    for perm in perms:
        if np.transpose(reference, perm).shape == actual.shape:
            return np.transpose(actual, np.argsort(perm))
    if [d for d in reference.shape if d != 1] == [d for d in actual.shape if d != 1]:
        return actual.reshape(reference.shape)
    return None


def _pick(chain: list[str], reference: Mapping[str, np.ndarray], output: _TfliteOutput) -> tuple[str, np.ndarray] | None:
    fits = [(tensor, moved) for tensor in chain
            if (moved := to_source_layout(reference[tensor], output.value)) is not None]
    return max(fits, key=lambda fit: cosine(reference[fit[0]], fit[1]), default=None)


def artifact_values(hub: Path, tflite_path: Path, settings: Mapping[str, Any], tensors: list[str],
                    feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{source tensor: the artifact's value of it, in the source layout}`` for the layers it can match."""
    import onnx

    model = onnx.load(str(hub), load_external_data=False)
    wanted = set(tensors)
    layers = [node.name for node in model.graph.node if node.op_type in TFLITE_OPS_FOR and node.name]
    op_types = {node.name: node.op_type for node in model.graph.node}
    chains = {layer: [t for t in chain if t in wanted] for layer, chain in candidate_tensors(model, layers).items()}
    reference = onnx_values(hub, sorted({t for chain in chains.values() for t in chain}), feeds)
    artifact_feeds = TflitePredictor(tflite_path, dict(settings), threads=1).artifact_feeds(
        {name: np.asarray(value) for name, value in feeds.items()})
    outputs = tflite_values(tflite_path, artifact_feeds, settings.get("signature"), dequantize=True)
    claimed: set[int] = set()
    last = -1
    values: dict[str, np.ndarray] = {}
    for layer in layers:
        chain = [t for t in chains.get(layer, []) if t in reference]
        allowed = TFLITE_OPS_FOR[op_types[layer]]
        ordered = sorted((o for o in outputs if o.position not in claimed and o.op in allowed),
                         key=lambda o: (o.position <= last, o.position))
        for output in ordered:
            fit = _pick(chain, reference, output) if chain else None
            if fit is not None:
                claimed.add(output.position)
                last = output.position
                values[fit[0]] = fit[1]
                break
    return values
