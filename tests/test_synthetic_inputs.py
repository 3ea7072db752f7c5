"""Domain-shaped synthetic inputs: photos for images, rendered text for OCR lines, band-limited audio."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack.models.source import Preprocess, TensorSpec
from edgepack.models.synthetic import domain_dataset_arrays, input_kind


def _neighbour_correlation(image: np.ndarray) -> float:
    """Correlation of horizontally adjacent pixels: ~1 for natural images, ~0 for white noise."""
    left, right = image[..., :-1].ravel(), image[..., 1:].ravel()
    return float(np.corrcoef(left, right)[0, 1])


@pytest.mark.parametrize("spec,kind", [
    (TensorSpec("x", (1, 3, 224, 224), "float32"), "image"),
    (TensorSpec("x", (1, 224, 224, 3), "float32", "NHWC"), "image"),
    (TensorSpec("x", (1, 1, 28, 28), "float32"), "image"),
    (TensorSpec("x", (1, 3, 48, 320), "float32"), "text-line"),
    (TensorSpec("x", (1, 512), "float32"), "audio"),
    (TensorSpec("x", (1, 1, 16000), "float32"), "audio"),
    (TensorSpec("x", (2, 1, 128), "float32"), "generic"),
    (TensorSpec("x", (1, 16), "int64"), "generic"),
    (TensorSpec("x", (1, 384), "float32"), "audio"),
    (TensorSpec("x", (1, 64), "float32"), "generic"),
])
def test_each_input_is_recognised_by_its_domain(spec, kind):
    assert input_kind(spec, spec.concrete_shape(1)) == kind


def test_images_are_natural_photo_crops_in_the_models_value_range():
    spec = TensorSpec("x", (1, 3, 96, 96), "float32")
    images = domain_dataset_arrays([spec], 6, seed=3)["x"]
    assert images.shape == (6, 3, 96, 96) and images.dtype == np.float32
    assert images.min() >= -1.0 and images.max() <= 1.0  # no preprocessing known: [-1, 1]
    assert min(_neighbour_correlation(image) for image in images) > 0.6
    assert not np.allclose(images[0], images[1])
    noise = domain_dataset_arrays([TensorSpec("x", (1, 3, 96), "float32")], 1)["x"]  # not an image: generic noise
    assert abs(_neighbour_correlation(noise)) < 0.3


def test_images_follow_the_specs_preprocessing_and_layout():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    spec = TensorSpec("x", (1, 64, 64, 3), "float32", "NHWC", Preprocess(scale=1 / 255, mean=mean, std=std))
    images = domain_dataset_arrays([spec], 4, seed=0)["x"]
    assert images.shape == (4, 64, 64, 3)
    raw = images * np.asarray(std) + np.asarray(mean)  # back to 0..1
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5 and raw.std() > 0.05


def test_text_lines_are_dark_glyphs_on_a_light_background():
    spec = TensorSpec("x", (1, 3, 48, 320), "float32")
    lines = domain_dataset_arrays([spec], 4, seed=0)["x"]
    for line in lines:
        gray = (line.mean(axis=0) + 1) / 2
        ink = float((gray < 0.4).mean())
        assert np.median(gray) > 0.7 and 0.01 < ink < 0.4, (np.median(gray), ink)


def test_audio_is_band_limited_and_bounded():
    spec = TensorSpec("x", (1, 4096), "float32")
    audio = domain_dataset_arrays([spec], 4, seed=0)["x"]
    assert audio.shape == (4, 4096) and np.abs(audio).max() <= 1.0 and audio.std() > 0.01
    spectrum = np.abs(np.fft.rfft(audio, axis=1)) ** 2
    low = spectrum[:, : spectrum.shape[1] // 2].sum()  # below 4 kHz at 16 kHz
    assert low / spectrum.sum() > 0.8


def test_the_same_seed_gives_the_same_inputs():
    specs = [TensorSpec("img", (1, 3, 32, 32), "float32"), TensorSpec("ids", (1, 8), "int64")]
    first, second = domain_dataset_arrays(specs, 3, seed=7), domain_dataset_arrays(specs, 3, seed=7)
    assert all(np.array_equal(first[k], second[k]) for k in first)
    assert not np.array_equal(first["img"], domain_dataset_arrays(specs, 3, seed=8)["img"])
