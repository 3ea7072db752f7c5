"""Recipe -> ``coremltools.optimize.coreml`` compression of a converted mlprogram.

What a recipe asks for is read from its precision and its torch passes (already applied to the source):

* ``palettize`` pass: the torch weights already hold ``2**bits`` k-means centroids per LUT; coremltools'
  ``palettize_weights(mode="kmeans")`` with the pass's bits and granularity stores LUT + n-bit indices
  (``constexpr_lut_to_dense``). Where the converter left the clustered values intact this reproduces them;
  where it folded other constants into the weights (BatchNorm into conv scales each output channel) it
  clusters the folded weights again, so the shipped LUT is always ``2**bits`` entries.
* a pruning pass (``magnitude_prune``, ``structured_prune``, ``semi_structured_24``): the zeros are stored
  sparse (``prune_weights`` with a zero threshold -> ``constexpr_sparse_to_dense``).
* precision ``int8-dynamic``: int8 linear weights (symmetric, per output channel), fp16 compute.

Each compression states the minimum deployment target it needs (coremltools docs); a recipe whose
compression needs a newer OS than the profile's minimum is refused, never silently raised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgepack.compress.recipe import Recipe
from edgepack.exporters.coreml.graph import import_coremltools

PRUNING_PASSES = ("magnitude_prune", "structured_prune", "semi_structured_24")
WEIGHT_OPS = ("conv", "conv_transpose", "linear", "matmul")
"""MIL ops whose constant weights are compressed (biases and other constants stay fp16)."""


@dataclass(frozen=True)
class Compression:
    """One coremltools compression step for a recipe."""

    name: str
    minimum_ios: int
    """Oldest iOS whose opset has the constexpr ops this compression writes (macOS = iOS - 3)."""
    apply: Callable[[Any], Any]
    settings: dict[str, Any]


def _config(op_config: Any) -> Any:
    import_coremltools()
    import coremltools.optimize.coreml as cto

    return cto.OptimizationConfig(op_type_configs={op: op_config for op in WEIGHT_OPS})


def _palettize(options: dict[str, Any]) -> Compression:
    import_coremltools()
    import coremltools.optimize.coreml as cto

    granularity = options.get("granularity", "per_tensor")
    bits = int(options.get("bits", 4))
    kwargs: dict[str, Any] = {"mode": "kmeans", "nbits": bits, "granularity": granularity, "weight_threshold": 0}
    if granularity == "per_grouped_channel":
        kwargs |= {"group_size": int(options.get("group_size", 16)), "channel_axis": 0}
    config = _config(cto.OpPalettizerConfig(**kwargs))
    return Compression(
        "palettize", 18 if granularity == "per_grouped_channel" else 16,
        lambda model: cto.palettize_weights(model, config),
        {"palettization": {"bits": bits, "granularity": granularity,
                           "lut": "k-means (coremltools) on the pass-clustered weights",
                           **({"group_size": kwargs["group_size"]} if "group_size" in kwargs else {})}},
    )


def _prune(pass_name: str) -> Compression:
    import_coremltools()
    import coremltools.optimize.coreml as cto

    config = _config(cto.OpThresholdPrunerConfig(threshold=1e-12, minimum_sparsity_percentile=0.1,
                                                  weight_threshold=0))
    return Compression("prune", 16, lambda model: cto.prune_weights(model, config),
                       {"sparsity": {"pass": pass_name, "storage": "constexpr_sparse_to_dense (zeros not stored)"}})


def _linear_int8() -> Compression:
    import_coremltools()
    import coremltools.optimize.coreml as cto

    config = _config(cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                                 granularity="per_channel", weight_threshold=0))
    return Compression("linear_int8", 16, lambda model: cto.linear_quantize_weights(model, config),
                       {"weights": "int8 linear, symmetric, per output channel (fp16 compute)"})


def plan_compression(recipe: Recipe) -> list[Compression]:
    """The coremltools steps ``recipe`` maps to, in order (prune before palettize/quantize)."""
    steps: list[Compression] = []
    passes = {spec.name: spec.options for spec in recipe.passes}
    pruned = next((name for name in PRUNING_PASSES if name in passes), None)
    if pruned and "palettize" not in passes and recipe.precision != "int8-dynamic":
        steps.append(_prune(pruned))
    if "palettize" in passes:
        steps.append(_palettize(passes["palettize"]))
    if recipe.precision == "int8-dynamic":
        steps.append(_linear_int8())
    return steps


def compress(model: Any, steps: list[Compression]) -> tuple[Any, dict[str, Any]]:
    """Apply ``steps`` to an mlprogram; returns the new model and what was applied (artifact settings)."""
    settings: dict[str, Any] = {}
    for step in steps:
        model = step.apply(model)
        settings |= step.settings
    return model, settings
