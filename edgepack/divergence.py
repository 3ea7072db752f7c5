"""The first divergent layer: where an artifact that fails parity starts to differ from its source.

The source's ONNX hub graph runs on ONNX Runtime with every node output exposed; the artifact's runtime
exposes the same tensors (:meth:`edgepack.exporters.base.Exporter.intermediate_values`: ONNX Runtime by tensor
name, OpenVINO through the ONNX tensor names its IR keeps, LiteRT by matching its ops to the source's layers,
:mod:`edgepack.exporters.tflite.intermediates`). Tensors are compared in the hub's topological
order under the recipe's parity tolerance; the first one past it names the layer where the artifact went
wrong (everything downstream inherits the error). Written to ``reports/<target>/divergence.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.compress.recipe import ParityTolerance
from edgepack.exporters.base import Artifact, Exporter
from edgepack.exporters.onnx.hub import onnx_values
from edgepack.parity import cosine


@dataclass(frozen=True)
class LayerError:
    """How far one source tensor is from the artifact's value of it."""

    tensor: str
    node: str
    op_type: str
    max_abs_error: float
    max_rel_error: float
    cosine: float
    diverged: bool
    span: list[str] = field(default_factory=list)
    """Source nodes since the previous compared tensor whose own outputs the artifact does not expose
    (fused into this one, e.g. a Conv and BatchNormalization before a compared Relu), then this node."""


@dataclass(frozen=True)
class DivergenceReport:
    """Per-layer errors in graph order and the first layer past the tolerance (``None``: none diverged, the
    error appears only in the outputs or in tensors the runtime does not expose)."""

    runtime: str
    tolerance: dict[str, float]
    compared: int
    first: LayerError | None
    layers: list[LayerError] = field(default_factory=list)
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.first is None:
            return self.note or f"no layer past the parity tolerance among {self.compared} compared"
        f = self.first
        fused = f"; computed with {', '.join(f.span[:-1])}" if len(f.span) > 1 else ""
        return (f"first divergent layer: {f.node} ({f.op_type}{fused}), rel err {f.max_rel_error:.2e}, "
                f"cosine {f.cosine:.5f} ({self.compared} layers compared)")


def _compare(reference: np.ndarray, actual: np.ndarray) -> tuple[float, float, float]:
    a, b = reference.astype(np.float64).ravel(), actual.astype(np.float64).ravel()
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.max(np.abs(a))) if a.size else 0.0
    return diff, diff / scale if scale else (0.0 if diff == 0 else float("inf")), cosine(a, b)


def find_divergence(
    hub: Path, exporter: Exporter, artifact: Artifact, feeds: Mapping[str, np.ndarray], tolerance: ParityTolerance,
) -> DivergenceReport:
    """Compare every float node output of ``hub`` with the artifact's value of it for one input ``feeds``."""
    import onnx

    limits = {"max_rel_error": tolerance.max_rel_error, "min_cosine": tolerance.min_cosine}
    model = onnx.load(str(hub), load_external_data=False)
    producers = [(output, node) for node in model.graph.node for output in node.output if output]
    reference = onnx_values(hub, [name for name, _ in producers], feeds)
    floats = [(name, node) for name, node in producers
              if name in reference and np.issubdtype(reference[name].dtype, np.floating) and reference[name].size > 1]
    actual = exporter.intermediate_values(artifact, [name for name, _ in floats], feeds, hub=hub)
    if actual is None:
        return DivergenceReport(exporter.runtime, limits, 0, None,
                                note=f"{exporter.runtime} does not expose intermediate tensors here")
    layers: list[LayerError] = []
    uncompared: list[str] = []
    float_names = {name for name, _ in floats}
    for name, node in producers:
        if name in reference and name not in float_names:
            continue  # shape arithmetic and other non-float tensors: not a layer
        value = actual.get(name)
        if value is None or name not in reference or np.shape(value) != reference[name].shape:
            uncompared.append(node.name or name)
            continue
        max_abs, max_rel, cos = _compare(reference[name], np.asarray(value))
        diverged = max_rel > tolerance.max_rel_error or cos < tolerance.min_cosine
        span = [*dict.fromkeys(uncompared), node.name or name]
        layers.append(LayerError(name, node.name or name, node.op_type, max_abs, max_rel, cos, diverged, span))
        uncompared = []
    first = next((layer for layer in layers if layer.diverged), None)
    note = None if layers else "no intermediate tensor of the source could be found in the artifact"
    return DivergenceReport(exporter.runtime, limits, len(layers), first, layers, note)
