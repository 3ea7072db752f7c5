"""ncnn's int8 calibration table (what ``ncnn2table`` writes), computed from edgepack's calibration data.

Weight scales are per output channel (per group for depthwise convolutions) ``127 / absmax``, or ``31 / absmax``
for 3x3 stride-1 convolutions (ncnn's int8 Winograd F(4,3) kernels need 6-bit weights, as ``ncnn2table`` does).
Activation scales are ``127 / threshold`` for the input blob of each quantized layer, with the threshold from the
recipe's calibration method: ``minmax`` (the largest absolute value), ``entropy`` (ncnn2table's KL-divergence
search over a 2048-bin histogram of absolute values) or ``percentile`` (of the non-zero absolute values)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from edgepack.exporters.ncnn.param import Layer

QUANTIZABLE = ("Convolution", "ConvolutionDepthWise", "InnerProduct")
"""Layer types ncnn runs with int8 weights and activations (``ncnn2int8``'s static post-training flow)."""
METHODS = ("minmax", "entropy", "percentile")
BINS = 2048
TARGET_BINS = 128
KL_EPS = 1e-4


@dataclass(frozen=True)
class CalibrationTable:
    """Per-layer weight scales and input-blob scales, keyed by ncnn layer name."""

    weights: dict[str, np.ndarray]
    activations: dict[str, float]

    def text(self) -> str:
        """The table in ``ncnn2table``'s text format (``ncnn2int8 in.param in.bin out.param out.bin TABLE``)."""
        lines = [f"{name}_param_0 " + " ".join(f"{v:.8g}" for v in scales) for name, scales in self.weights.items()]
        lines += [f"{name} {scale:.8g}" for name, scale in self.activations.items()]
        return "\n".join(lines) + "\n"


def is_winograd_6bit(layer: Layer) -> bool:
    """3x3, stride 1, dilation 1 convolutions: ncnn's int8 Winograd kernels expect 6-bit weights."""
    kernel_w, dilation_w, stride_w = layer.int_param(1, 0), layer.int_param(2, 1), layer.int_param(3, 1)
    kernel = (kernel_w, layer.int_param(11, kernel_w))
    dilation = (dilation_w, layer.int_param(12, dilation_w))
    stride = (stride_w, layer.int_param(13, stride_w))
    return layer.type == "Convolution" and kernel == (3, 3) and dilation == (1, 1) and stride == (1, 1)


def weight_scales(layer: Layer, weights: np.ndarray, *, per_channel: bool) -> np.ndarray:
    """Scales of one layer's weights: one per output channel (per group for ConvolutionDepthWise)."""
    rows = layer.int_param(7, 1) if layer.type == "ConvolutionDepthWise" else layer.int_param(0, 0)
    absmax = np.abs(weights.reshape(rows, -1)).max(axis=1)
    if not per_channel:
        absmax = np.full_like(absmax, absmax.max())
    levels = 31.0 if is_winograd_6bit(layer) else 127.0
    return np.where(absmax > 0, levels / np.maximum(absmax, 1e-30), 1.0).astype(np.float32)


def _kl_threshold_bin(histogram: np.ndarray) -> int:
    """The clipping bin ``ncnn2table`` picks: the threshold whose 128-level requantized distribution has the
    smallest KL divergence to the clipped histogram (same arithmetic, vectorised)."""
    total = histogram.sum()
    normed = histogram / total if total > 0 else histogram.astype(np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(normed)])

    def integral(x: np.ndarray) -> np.ndarray:
        whole = np.floor(x).astype(int)
        inside = np.minimum(whole, len(normed) - 1)
        return cumulative[whole] + (x - whole) * np.where(whole < len(normed), normed[inside], 0.0)

    best, best_kl = TARGET_BINS, np.inf
    for threshold in range(TARGET_BINS, BINS):
        clip = normed[:threshold] + KL_EPS
        clip[-1] += normed[threshold:].sum()
        per_bin = threshold / TARGET_BINS
        edges = np.arange(TARGET_BINS + 1) * per_bin
        edges[-1] = threshold
        quantized = (integral(edges[1:]) - integral(edges[:-1])) / per_bin
        # spread each level back over the bins it covers (overlap-weighted), as ncnn's expand_distribution does
        points = np.arange(threshold + 1, dtype=np.float64)
        level = np.minimum((points // per_bin).astype(int), TARGET_BINS - 1)
        below = np.concatenate([[0.0], np.cumsum(quantized)])[level] * per_bin
        spread = below + (points - level * per_bin) * quantized[level]
        expand = np.diff(spread) + KL_EPS
        kl = float(np.sum(clip * np.log(clip / expand)))
        if kl < best_kl:
            best, best_kl = threshold, kl
    return best


def activation_scales(
    layers: list[Layer],
    samples: Callable[[], Iterable[dict[str, np.ndarray]]],
    extract: Callable[[dict[str, np.ndarray], list[str]], list[np.ndarray]],
    *,
    method: str,
    percentile: float,
) -> dict[str, float]:
    """``127 / threshold`` for each layer's input blob. ``samples()`` yields one feed per sample (blob name ->
    array without batch dim); ``extract(feed, blobs)`` runs the float model and returns those blobs."""
    blobs = [layer.bottoms[0] for layer in layers]
    absmax = np.zeros(len(blobs))
    for feed in samples():
        for index, value in enumerate(extract(feed, blobs)):
            absmax[index] = max(absmax[index], float(np.abs(value).max(initial=0.0)))
    thresholds = absmax.copy()
    if method != "minmax":
        histograms = np.zeros((len(blobs), BINS))
        for feed in samples():
            for index, value in enumerate(extract(feed, blobs)):
                magnitude = np.abs(value[value != 0])
                if absmax[index] > 0 and magnitude.size:
                    bins = np.minimum((magnitude / absmax[index] * BINS).astype(int), BINS - 1)
                    histograms[index] += np.bincount(bins, minlength=BINS)
        for index, histogram in enumerate(histograms):
            if absmax[index] == 0 or histogram.sum() == 0:
                continue
            if method == "entropy":
                chosen = _kl_threshold_bin(histogram)
            else:
                cumulative = np.cumsum(histogram) / histogram.sum()
                chosen = int(np.searchsorted(cumulative, percentile / 100.0))
            thresholds[index] = (min(chosen, BINS - 1) + 0.5) * absmax[index] / BINS
    return {layer.name: (127.0 / t if t > 0 else 1.0) for layer, t in zip(layers, thresholds)}
