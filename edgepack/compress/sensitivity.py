"""Per-layer sensitivity analysis and the mixed-precision search built on it.

Runtime-independent: the caller supplies ``evaluate(exclude) -> metric`` which quantizes the model with
the given layers kept in float (through the target runtime's own quantizer) and measures the metric.
A layer's sensitivity is the drop when *only that layer* is quantized.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "AveragePool", "GlobalAveragePool", "MaxPool")


@dataclass(frozen=True)
class LayerSensitivity:
    """Metric with only ``layer`` quantized, and its drop from the float baseline."""

    layer: str
    metric: float
    drop: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def quantizable_layers(onnx_path: Path) -> list[str]:
    """Names of the ONNX nodes a quantizer would turn into int8 compute, in graph order."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return [node.name for node in graph.node if node.op_type in QUANTIZABLE_OPS and node.name]


def rank_layers(
    layers: Sequence[str], baseline: float, evaluate: Callable[[list[str]], float]
) -> list[LayerSensitivity]:
    """Quantize each layer alone (all others excluded); most sensitive first, ties by graph order."""
    results = []
    for index, layer in enumerate(layers):
        metric = evaluate([other for other in layers if other != layer])
        results.append((index, LayerSensitivity(layer, metric, baseline - metric)))
    results.sort(key=lambda item: (-round(item[1].drop, 12), item[0]))
    return [item for _, item in results]


def exclusion_candidates(ranking: Sequence[LayerSensitivity], max_float_layers: int) -> list[list[str]]:
    """Exclude sets to try, smallest first: the top-1, top-2, ... most sensitive layers with a drop > 0."""
    sensitive = [r.layer for r in ranking if r.drop > 0][:max_float_layers]
    return [sensitive[:k] for k in range(1, len(sensitive) + 1)]
