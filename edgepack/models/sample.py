"""Synthetic inputs that fit a model's :class:`TensorSpec` list (for tracing and parity without data)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgepack.models.source import ModelSource, TensorSpec

_MASK_WORDS = ("mask",)
_TOKEN_TYPE_WORDS = ("token_type", "segment")


def _integer_input(spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    lowered = spec.name.lower()
    if any(word in lowered for word in _MASK_WORDS):
        return np.ones(shape, dtype=spec.dtype)
    if any(word in lowered for word in _TOKEN_TYPE_WORDS):
        return np.zeros(shape, dtype=spec.dtype)
    high = 2 if spec.dtype == "bool" else 1000
    return rng.integers(0, high, size=shape).astype(spec.dtype)


def example_inputs(specs: Sequence[TensorSpec], *, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """One random batch per spec: standard-normal floats, token-id-like ints, all-ones masks."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = spec.concrete_shape(batch)
        if spec.dtype.startswith("float"):
            out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            out[spec.name] = _integer_input(spec, shape, rng)
    return out


def _noise_dataset_arrays(specs: Sequence[TensorSpec], count: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    batches = [example_inputs(specs, batch=1, seed=seed + i) for i in range(count)]
    return {s.name: np.concatenate([b[s.name] for b in batches], axis=0) for s in specs}


def recalibrate_batchnorm(source: "ModelSource", batches: int = 16) -> "ModelSource":
    """Give a random-init torch model non-degenerate activations: BatchNorm running statistics from random inputs.

    Random-init torchvision MobileNets otherwise produce near-constant, tiny outputs, which makes any fidelity
    number meaningless and lets an int8 artifact that outputs zeros look "equal" (or, with integer I/O,
    quantize the output to a constant). For benchmarks and tests on untrained architectures; the source's
    ``sha256`` is updated to the new weights.
    """
    import torch

    from edgepack.hashing import module_sha256

    module = source.torch_module
    if module is None or not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        return source
    module.train()
    with torch.no_grad():
        for index in range(batches):
            arrays = _noise_dataset_arrays(source.inputs, 4, seed=500 + index)
            module(*(torch.from_numpy(arrays[s.name]) for s in source.inputs))
    module.eval()
    source.sha256 = module_sha256(module)
    return source
