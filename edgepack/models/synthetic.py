"""Domain-shaped synthetic inputs, for parity and the fidelity gate when the user gives no data.

Uniform noise says little about how an artifact treats real inputs (activation ranges, saturating
quantizers, thresholded maps). Each input is generated in the shape of its domain, from data a package
ships or that is rendered here, never downloaded:

* **images** (float, 4-D, 1 or 3 channels, NCHW or NHWC as the spec's layout says): crops of the two photos
  scikit-learn ships (``load_sample_images``), randomly cropped, resized, flipped and colour-jittered;
* **text lines** (images at most 64 pixels high and at least three times as wide, the OCR recogniser
  shape): dark random strings rendered with Pillow's default font on a light, noisy background;
* **audio** (float ``[1, N]`` or ``[1, 1, N]`` with N >= 256): a few tones plus band-limited noise in [-1, 1];
* anything else: standard-normal floats, token-id-like integers and all-ones masks, as before.

Image pixels go through the spec's preprocessing (``(x * scale - mean) / std``) when it has one, else are
mapped to [-1, 1]. Real data given with ``--calib`` / ``--eval`` always wins; the manifest labels these
inputs "synthetic, domain-shaped".
"""

from __future__ import annotations

import functools
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from edgepack.models.source import TensorSpec

if TYPE_CHECKING:
    from edgepack.data.dataset import Dataset

ORIGIN = "synthetic, domain-shaped"
CALIBRATION_SAMPLES = 128
"""Synthetic calibration samples when the user gives none (the int8 recipes' own ``samples``)."""
CALIBRATION_SEED = 100_000
"""Seed of the synthetic calibration samples: far from the fidelity/parity seeds, so the gate never scores
an artifact on the samples it was calibrated on."""
MAX_TEXT_LINE_HEIGHT = 64
MIN_AUDIO_SAMPLES = 256


def input_kind(spec: TensorSpec, shape: tuple[int, ...]) -> str:
    """``image``, ``text-line``, ``audio`` or ``generic`` for one input of concrete ``shape``."""
    if spec.dtype == "uint8" and len(shape) == 4:  # raw pixels (--bake-preprocess)
        channels, height, width = _chw(spec, shape)
        return "image" if channels in (1, 3) and height >= 8 and width >= 8 else "generic"
    if not spec.dtype.startswith("float"):
        return "generic"
    if len(shape) == 4:
        channels, height, width = _chw(spec, shape)
        if channels in (1, 3) and height >= 8 and width >= 8:
            return "text-line" if height <= MAX_TEXT_LINE_HEIGHT and width >= 3 * height else "image"
    if len(shape) in (2, 3) and all(d == 1 for d in shape[:-1]) and shape[-1] >= MIN_AUDIO_SAMPLES:
        return "audio"
    return "generic"


def _channels_last(spec: TensorSpec, shape: tuple[int, ...]) -> bool:
    layout = (spec.layout or "").upper()
    if layout in ("NHWC", "NCHW"):
        return layout == "NHWC"
    return shape[-1] in (1, 3) and shape[1] not in (1, 3)


def _chw(spec: TensorSpec, shape: tuple[int, ...]) -> tuple[int, int, int]:
    if _channels_last(spec, shape):
        return shape[3], shape[1], shape[2]
    return shape[1], shape[2], shape[3]


@functools.cache
def _photos() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_sample_images

    return tuple(np.asarray(image, dtype=np.uint8) for image in load_sample_images().images)


def _photo_crop(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """An ``(H, W, 3)`` float image in 0..255 from a random crop of a shipped photo."""
    from PIL import Image

    photos = _photos()
    photo = photos[int(rng.integers(len(photos)))]
    rows, cols = photo.shape[:2]
    aspect = width / height
    crop_h = int(rng.integers(max(8, rows // 4), rows + 1))
    crop_w = min(cols, max(8, int(crop_h * aspect)))
    crop_h = min(rows, max(8, int(crop_w / aspect)))
    top, left = int(rng.integers(rows - crop_h + 1)), int(rng.integers(cols - crop_w + 1))
    patch = Image.fromarray(photo[top: top + crop_h, left: left + crop_w]).resize((width, height), Image.BILINEAR)
    array = np.asarray(patch, dtype=np.float32)
    if rng.random() < 0.5:
        array = array[:, ::-1]
    gain = rng.uniform(0.8, 1.2, size=3).astype(np.float32)
    return np.clip(array * gain + rng.uniform(-20, 20), 0, 255)


def _text_line(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """An ``(H, W, 3)`` float image in 0..255: a dark random string on a light noisy background."""
    from PIL import Image, ImageDraw, ImageFont

    background = int(rng.integers(190, 256))
    canvas = Image.new("RGB", (width, height), (background,) * 3)
    draw = ImageDraw.Draw(canvas)
    alphabet = string.ascii_letters + string.digits + "  .,:-/"
    count = max(3, width // max(6, height // 2))
    text = "".join(rng.choice(list(alphabet), size=count))
    try:
        font = ImageFont.load_default(size=max(8, int(height * 0.6)))
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        font = ImageFont.load_default()
    ink = int(rng.integers(0, 80))
    draw.text((int(rng.integers(0, max(1, width // 20))), int(height * 0.15)), text, fill=(ink,) * 3, font=font)
    array = np.asarray(canvas, dtype=np.float32)
    return np.clip(array + rng.normal(0, 6, size=array.shape), 0, 255)


def _audio(samples: int, rng: np.random.Generator, rate: float = 16000.0) -> np.ndarray:
    t = np.arange(samples, dtype=np.float64) / rate
    signal = np.zeros(samples)
    for _ in range(int(rng.integers(1, 4))):
        signal += rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * rng.uniform(80, 4000) * t + rng.uniform(0, 2 * np.pi))
    noise = rng.normal(0, 1, samples)
    kernel = np.ones(8) / 8  # a moving average: noise limited to the low band speech lives in
    signal += rng.uniform(0.01, 0.1) * np.convolve(noise, kernel, mode="same")
    return np.clip(signal, -1, 1).astype(np.float32)


def _normalise(image: np.ndarray, spec: TensorSpec, channels: int) -> np.ndarray:
    """0..255 ``(H, W, 3)`` -> the model's value range, ``(H, W, C)``."""
    if channels == 1:
        image = image.mean(axis=2, keepdims=True)
    pre = spec.preprocess
    if pre is None:
        return (image / 127.5 - 1.0).astype(np.float32)
    mean = np.asarray(pre.mean or (0.0,), dtype=np.float32)[:channels]
    std = np.asarray(pre.std or (1.0,), dtype=np.float32)[:channels]
    return ((image * pre.scale - mean) / std).astype(np.float32)


def domain_sample(spec: TensorSpec, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray | None:
    """One batch-1 sample of ``shape`` for ``spec`` in its domain, or ``None`` for a generic input."""
    kind = input_kind(spec, shape)
    if kind in ("image", "text-line"):
        channels, height, width = _chw(spec, shape)
        raw = (_text_line if kind == "text-line" else _photo_crop)(height, width, rng)
        if spec.dtype == "uint8":
            raw = raw.mean(axis=2, keepdims=True) if channels == 1 else raw
            image = np.clip(np.rint(raw), 0, 255)
        else:
            image = _normalise(raw, spec, channels)
        array = image[None] if _channels_last(spec, shape) else image.transpose(2, 0, 1)[None]
        return np.ascontiguousarray(array, dtype=spec.dtype)
    if kind == "audio":
        return _audio(shape[-1], rng).reshape(shape).astype(spec.dtype)
    return None


def calibration_refusal(specs: Sequence[TensorSpec]) -> str | None:
    """Why edgepack makes no calibration data of its own for these inputs, or ``None`` when it can.

    Quantizers calibrate activation ranges; ranges taken from noise are not ranges of the model's data, so
    only inputs of a recognised domain get synthetic calibration data. Integer inputs (token ids, masks,
    sample rates) ride along; a float input of no recognised kind (an LSTM state, a feature vector) refuses.
    """
    kinds = {spec.name: input_kind(spec, spec.concrete_shape(1)) for spec in specs}
    unshaped = [spec.name for spec in specs if kinds[spec.name] == "generic" and spec.dtype.startswith("float")]
    if unshaped:
        return f"input(s) {', '.join(unshaped)} are not image, text-line or audio shaped"
    if all(kind == "generic" for kind in kinds.values()):
        return "no input is image, text-line or audio shaped"
    return None


def synthetic_calibration(specs: Sequence[TensorSpec], count: int = CALIBRATION_SAMPLES) -> "Dataset | None":
    """Domain-shaped calibration data for a model whose user gave none, or ``None`` where
    :func:`calibration_refusal` says edgepack cannot make meaningful data for its inputs. The dataset's
    origin ("synthetic, domain-shaped (128 samples)") is what the manifest records."""
    from edgepack.data.dataset import Dataset

    if calibration_refusal(specs) is not None:
        return None
    return Dataset(domain_dataset_arrays(specs, count, seed=CALIBRATION_SEED), None, f"{ORIGIN} ({count} samples)")


def domain_dataset_arrays(specs: Sequence[TensorSpec], count: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """``count`` samples per input stacked on axis 0: domain-shaped where the input's kind is recognised,
    else :func:`edgepack.models.sample.example_inputs`' generic values. Each batch-1 sample is generated in
    the model's layout; an input whose batch axis is not 0 (:attr:`TensorSpec.batch_axis`, an LSTM state
    ``[2, batch, 128]``) is stored with that axis first and named in the result's ``batch_axes``
    (:class:`edgepack.data.dataset.InputArrays`), so a :class:`~edgepack.data.dataset.Dataset` built from it
    feeds the model ``[2, 1, 128]``."""
    from edgepack.data.dataset import InputArrays
    from edgepack.models.sample import example_inputs

    out: dict[str, list[np.ndarray]] = {spec.name: [] for spec in specs}
    for index in range(count):
        rng = np.random.default_rng(seed + index)
        generic = example_inputs(specs, batch=1, seed=seed + index)
        for spec in specs:
            sample = domain_sample(spec, spec.concrete_shape(1), rng)
            sample = generic[spec.name] if sample is None else sample
            out[spec.name].append(np.moveaxis(sample, spec.batch_axis, 0))
    axes = {spec.name: spec.batch_axis for spec in specs}
    return InputArrays({name: np.concatenate(samples, axis=0) for name, samples in out.items()}, axes)
