"""Default parity tolerances mean something per precision (issue 18, item 15: "max_rel_error 1.0, min_cosine 0.9
makes 'parity pass' mean little"). The bounds are docs/compression.md's table; a broken conversion fails them."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack.compress.recipe import load_recipes
from edgepack.parity import compare

# recipe name -> (largest max_rel_error, smallest min_cosine) it may declare
BOUNDS = {"fp32": (1e-3, 0.9999), "fp16": (2e-2, 0.999), "sparse24-fp16": (2e-2, 0.999)}
EIGHT_BIT = (1.0, 0.98)  # max_rel_error: one outlier channel dominates it (MiniLM int8-dynamic 0.86)
FOUR_BIT = (1.0, 0.95)
PRUNED_WITHOUT_FINE_TUNING = {"sparse50-fp16"}  # changes the function by design; the gate judges it


def _bound(name: str) -> tuple[float, float]:
    if name in BOUNDS:
        return BOUNDS[name]
    return FOUR_BIT if "4bit" in name or name.startswith("int4") else EIGHT_BIT


@pytest.mark.parametrize("name", sorted(load_recipes().recipes))
def test_every_shipped_recipe_declares_a_tolerance_within_its_precision_bound(name):
    if name in PRUNED_WITHOUT_FINE_TUNING:
        pytest.skip("pruning without fine-tuning changes the outputs by design; the gate judges it")
    parity = load_recipes().get(name).parity
    max_rel, min_cosine = _bound(name)
    assert parity.max_rel_error <= max_rel and parity.min_cosine >= min_cosine, (name, parity)


def _judge(reference: np.ndarray, candidate: np.ndarray, tolerance):
    return compare(lambda batch: {"y": reference}, lambda batch: {"y": candidate}, [{"x": reference}], tolerance)


def test_the_int8_tolerance_passes_quantization_noise_and_fails_a_broken_conversion():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((16, 10)).astype(np.float32) * 4
    tolerance = load_recipes().get("int8").parity
    step = np.abs(reference).max() / 127  # one int8 step of the output range
    noisy = reference + rng.uniform(-step, step, reference.shape).astype(np.float32)
    assert _judge(reference, noisy, tolerance).passed
    swapped = reference[:, ::-1].copy()  # e.g. a converter that reversed the class axis
    assert not _judge(reference, swapped, tolerance).passed
    shuffled = reference[:, np.random.default_rng(1).permutation(10)]  # outputs in the wrong order
    assert not _judge(reference, shuffled, tolerance).passed
