"""Weight clustering / palettization (pass ``palettize``) and its compressed-size estimate.

Every selected Conv/Linear weight is clustered with a deterministic 1-D k-means (Lloyd's algorithm
from a quantile start and ``n_init`` seeded k-means++ starts; the lowest squared error wins) into
``2**bits`` centroids, either one look-up table (LUT) for the whole tensor (``per_tensor``) or one per
block of ``group_size`` output channels (``per_grouped_channel``). Each weight is then *replaced by its
centroid*, so the model runs as it is and any runtime receives the clustered values; a palettizing
converter (Core ML, ExecuTorch) recovers the LUT + indices exactly from them.

Sizes: :func:`huffman_size_estimate` counts the bytes of Huffman-coded indices (never more than the
fixed ``bits`` per index) plus the LUT (float32 centroids and one code-length byte per entry).
"""

from __future__ import annotations

import copy
import heapq
import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from edgepack.compress.passes import PassConfig, PassContext, TorchPass
from edgepack.compress.prune import LayerKind, as_config, check_module, run_pass, select_layers
from edgepack.errors import InputError

Granularity = Literal["per_tensor", "per_grouped_channel"]
LUT_ENTRY_BYTES = 4 + 1
"""Bytes stored per LUT entry: a float32 centroid and its canonical-Huffman code length."""
MAX_LUT_SIZE = 256
"""Tensors with more distinct values per group than this count as not palettized in reports."""
_INIT_SAMPLE = 100_000


class PalettizeConfig(PassConfig):
    """Options of ``palettize``.

    ``bits`` (2..8) gives ``2**bits`` centroids per LUT; ``granularity`` is one LUT per tensor or one per
    ``group_size`` output channels; ``seed`` fixes the k-means++ initialisation; ``preserve_zeros``
    gives exact zeros (e.g. from a pruning pass before) a centroid of their own, so sparsity survives
    and the other ``2**bits - 1`` centroids fit the non-zero weights.
    """

    bits: int = Field(default=4, ge=2, le=8)
    granularity: Granularity = "per_tensor"
    group_size: int = Field(default=16, ge=1)
    seed: int = Field(default=0, ge=0)
    max_iter: int = Field(default=300, ge=1, le=10_000)
    n_init: int = Field(default=3, ge=0, le=32)
    preserve_zeros: bool = True
    module_types: tuple[LayerKind, ...] = Field(default=("Conv", "Linear"), min_length=1)
    exclude: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _group_size_needs_groups(self) -> PalettizeConfig:
        if "group_size" in self.model_fields_set and self.granularity != "per_grouped_channel":
            raise ValueError("group_size is only used with granularity = 'per_grouped_channel'")
        return self


# --------------------------------------------------------------------------------------------------
# 1-D k-means
# --------------------------------------------------------------------------------------------------


def assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid for every value (``centroids`` sorted ascending)."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2.0
    return np.searchsorted(midpoints, values, side="left")


def _kmeans_pp(pool: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding on ``pool``; pads with evenly spaced values if the pool runs out of spread."""
    centroids = [pool[rng.integers(len(pool))]]
    distance = (pool - centroids[0]) ** 2
    while len(centroids) < k:
        total = distance.sum()
        if total <= 0.0:
            break
        chosen = pool[rng.choice(len(pool), p=distance / total)]
        centroids.append(chosen)
        distance = np.minimum(distance, (pool - chosen) ** 2)
    pad = np.linspace(pool.min(), pool.max(), k - len(centroids)) if len(centroids) < k else []
    return np.sort(np.concatenate([np.asarray(centroids), pad]))


def kmeans_1d(values: np.ndarray, k: int, *, seed: int = 0, max_iter: int = 300, n_init: int = 3) -> np.ndarray:
    """Sorted centroids (at most ``k``) of a deterministic 1-D k-means of ``values``.

    With ``k`` or fewer distinct values the centroids are those values exactly. Otherwise Lloyd's
    algorithm starts from a quantile initialisation and from ``n_init`` k-means++ seedings (one seeded
    generator) and the run with the lowest squared error wins. Iterations run on the sorted values with
    prefix sums (each cluster is an interval, so an iteration costs ``O(k log n)``) and stop when no
    cluster boundary moves or after ``max_iter``; an empty cluster keeps its centroid.
    """
    values = np.sort(np.asarray(values, dtype=np.float64).ravel())
    distinct = np.unique(values)
    if len(distinct) <= k:
        return distinct
    rng = np.random.default_rng(seed)
    pool = values if len(values) <= _INIT_SAMPLE else rng.choice(values, _INIT_SAMPLE, replace=False)
    prefix = np.concatenate([[0.0], np.cumsum(values)])
    prefix_sq = np.concatenate([[0.0], np.cumsum(values**2)])
    starts = [np.quantile(values, (np.arange(k) + 0.5) / k)] + [_kmeans_pp(pool, k, rng) for _ in range(n_init)]
    best, best_error = starts[0], np.inf
    for start in starts:
        centroids, bounds = _lloyd(values, prefix, start, max_iter)
        error = _squared_error(prefix, prefix_sq, bounds)
        if error < best_error:
            best, best_error = centroids, error
    return best


def _lloyd(
    values: np.ndarray, prefix: np.ndarray, centroids: np.ndarray, max_iter: int
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd iterations on sorted ``values``; returns the centroids and their cluster bounds."""
    bounds = _bounds(values, centroids)
    for _ in range(max_iter):
        counts = np.diff(bounds)
        sums = np.diff(prefix[bounds])
        centroids = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), centroids))
        new_bounds = _bounds(values, centroids)
        if np.array_equal(new_bounds, bounds):
            break
        bounds = new_bounds
    return centroids, _bounds(values, centroids)


def _squared_error(prefix: np.ndarray, prefix_sq: np.ndarray, bounds: np.ndarray) -> float:
    """Sum of squared distances of values to their cluster means (clusters given by ``bounds``)."""
    counts = np.diff(bounds)
    sums = np.diff(prefix[bounds])
    squares = np.diff(prefix_sq[bounds])
    return float((squares - sums**2 / np.maximum(counts, 1)).sum())


def _bounds(sorted_values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Cluster ``j`` is ``sorted_values[bounds[j]:bounds[j + 1]]`` (``k + 1`` entries)."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2.0
    inner = np.searchsorted(sorted_values, midpoints, side="right")
    return np.concatenate([[0], inner, [len(sorted_values)]])


# --------------------------------------------------------------------------------------------------
# Palettization
# --------------------------------------------------------------------------------------------------


def _row_groups(rows: int, granularity: str, group_size: int) -> list[slice]:
    if granularity == "per_tensor":
        return [slice(0, rows)]
    return [slice(start, min(start + group_size, rows)) for start in range(0, rows, group_size)]


def palettize_weight(weight: torch.Tensor, config: PalettizeConfig) -> torch.Tensor:
    """``weight`` with every value replaced by its k-means centroid (``2**bits`` per LUT)."""
    rows = weight.detach().cpu().double().numpy().reshape(weight.shape[0], -1)
    clustered = np.empty_like(rows)
    for block in _row_groups(rows.shape[0], config.granularity, config.group_size):
        clustered[block] = _cluster_values(rows[block].ravel(), config).reshape(rows[block].shape)
    return torch.from_numpy(clustered).reshape(weight.shape).to(device=weight.device, dtype=weight.dtype)


def _cluster_values(values: np.ndarray, config: PalettizeConfig) -> np.ndarray:
    """``values`` replaced by their centroids; exact zeros keep a centroid of their own when asked."""
    zeros = values == 0.0
    keep_zeros = bool(config.preserve_zeros and zeros.any() and not zeros.all())
    fit = values[~zeros] if keep_zeros else values
    k = 2**config.bits - int(keep_zeros)
    centroids = kmeans_1d(fit, k, seed=config.seed, max_iter=config.max_iter, n_init=config.n_init)
    clustered = centroids[assign(values, centroids)]
    if keep_zeros:
        clustered[zeros] = 0.0
    return clustered


def palettize(module: nn.Module, *, context: PassContext | None = None, **options: Any) -> nn.Module:
    """A copy of ``module`` with clustered weights; ``options`` as :class:`PalettizeConfig`."""
    return run_pass(Palettize(), module, options, context)


class Palettize(TorchPass):
    """k-means weight clustering of Conv/Linear layers to ``2**bits`` values per LUT."""

    name: ClassVar[str] = "palettize"
    Config: ClassVar[type[PassConfig]] = PalettizeConfig

    def apply(self, module: Any, config: PassConfig, context: PassContext) -> nn.Module:
        cfg = as_config(config, PalettizeConfig)
        clustered = copy.deepcopy(check_module(module, self.name))
        for layer in select_layers(clustered, cfg.module_types, cfg.exclude, pass_name=self.name).values():
            with torch.no_grad():
                layer.weight.copy_(palettize_weight(layer.weight, cfg))
        return clustered


# --------------------------------------------------------------------------------------------------
# Size estimates
# --------------------------------------------------------------------------------------------------


def huffman_code_lengths(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Huffman code length (bits) of every symbol given its count; unused symbols get 0.

    A lone used symbol gets 1 bit (a code needs at least one bit per symbol to be decodable by count).
    """
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(len(counts), dtype=np.int64)
    heap = [(int(c), i, [i]) for i, c in enumerate(counts) if c > 0]
    if len(heap) == 1:
        lengths[heap[0][1]] = 1
    heapq.heapify(heap)
    tiebreak = len(counts)
    while len(heap) > 1:
        count_a, _, symbols_a = heapq.heappop(heap)
        count_b, _, symbols_b = heapq.heappop(heap)
        lengths[symbols_a + symbols_b] += 1
        heapq.heappush(heap, (count_a + count_b, tiebreak, symbols_a + symbols_b))
        tiebreak += 1
    return lengths


def huffman_size_estimate(indices: np.ndarray, bits: int, n_centroids: int) -> int:
    """Bytes to store ``indices`` Huffman-coded (at most ``bits`` each) plus a LUT of ``n_centroids``.

    The LUT costs :data:`LUT_ENTRY_BYTES` per entry (float32 value + code length).
    """
    indices = np.asarray(indices).ravel()
    if indices.size and (indices.min() < 0 or indices.max() >= n_centroids):
        raise InputError(f"indices must lie in [0, {n_centroids}), got [{indices.min()}, {indices.max()}]")
    counts = np.bincount(indices, minlength=n_centroids)
    coded_bits = int((counts * huffman_code_lengths(counts)).sum())
    payload_bits = min(coded_bits, indices.size * bits)
    return math.ceil(payload_bits / 8) + n_centroids * LUT_ENTRY_BYTES


def _layer_report(weight: torch.Tensor, group_size: int | None) -> dict[str, Any]:
    rows = weight.detach().cpu().double().numpy().reshape(weight.shape[0], -1)
    granularity = "per_tensor" if group_size is None else "per_grouped_channel"
    blocks = [np.unique(rows[b], return_inverse=True) for b in _row_groups(rows.shape[0], granularity, group_size or 1)]
    max_per_lut = max(len(distinct) for distinct, _ in blocks)
    palettized = max_per_lut <= MAX_LUT_SIZE
    fp32_bytes = rows.size * 4
    estimated = fp32_bytes
    if palettized:
        sizes = [huffman_size_estimate(inv, max(1, math.ceil(math.log2(len(d)))), len(d)) for d, inv in blocks]
        estimated = min(sum(sizes), fp32_bytes)
    return {
        "params": rows.size,
        "unique": len(np.unique(rows)),
        "max_unique_per_lut": max_per_lut,
        "luts": len(blocks),
        "palettized": palettized,
        "fp32_bytes": fp32_bytes,
        "estimated_bytes": estimated,
    }


def palettization_report(
    module: nn.Module,
    *,
    group_size: int | None = None,
    module_types: Sequence[LayerKind] = ("Conv", "Linear"),
) -> dict[str, Any]:
    """Distinct weight values and estimated compressed size per Conv/Linear layer, and in total.

    ``group_size`` reads the weights as one LUT per that many output channels (``None``: one per tensor).
    A layer with more than :data:`MAX_LUT_SIZE` values in a LUT counts as not palettized and is sized as
    float32. Returns ``{"layers": {name: {...}}, "fp32_bytes", "estimated_bytes", "ratio"}``.
    """
    layers = {
        name: _layer_report(layer.weight, group_size)
        for name, layer in select_layers(module, module_types, (), pass_name="palettization_report").items()
    }
    fp32 = sum(v["fp32_bytes"] for v in layers.values())
    estimated = sum(v["estimated_bytes"] for v in layers.values())
    return {"layers": layers, "fp32_bytes": fp32, "estimated_bytes": estimated, "ratio": estimated / max(fp32, 1)}
