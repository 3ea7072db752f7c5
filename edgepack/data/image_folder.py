"""ImageFolder-style data (``DIR/<class>/<image>``) as a :class:`Dataset` for one image input.

Classes are the sub-folder names; they map to the model's labels by name when the model has labels that
include every folder name, else to sorted-folder order (torchvision's ``ImageFolder`` convention). Each
image is decoded with Pillow, converted to the input's channel count (1: grayscale, 3: RGB), resized to the
input's height x width (bilinear), preprocessed with the input's :class:`Preprocess` (``(x * scale - mean) /
std`` per channel; without one, ``x / 255``) and laid out as the input expects (NCHW or NHWC).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgepack.data.dataset import Dataset, conform
from edgepack.errors import DataError
from edgepack.models.source import TensorSpec

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def _image_geometry(spec: TensorSpec, origin: str) -> tuple[int, int, int, bool]:
    """(channels, height, width, channels_last) of a 4-D image input with static spatial dims."""
    shape = spec.shape
    if len(shape) != 4:
        raise DataError(f"{origin}: an image folder needs a 4-D image input; '{spec.name}' is {spec.shape_str()}")
    channels_last = spec.layout == "NHWC" or (spec.layout is None and shape[-1] in (1, 3) and shape[1] not in (1, 3))
    c, h, w = (shape[3], shape[1], shape[2]) if channels_last else (shape[1], shape[2], shape[3])
    if not all(isinstance(d, int) and d > 0 for d in (c, h, w)) or c not in (1, 3):
        raise DataError(f"{origin}: input '{spec.name}' {spec.shape_str()} needs static channels (1 or 3) and size",
                        hint="give one with --input NAME:1x3x224x224")
    return int(c), int(h), int(w), channels_last


def _class_index(folders: list[str], labels: Sequence[str] | None, origin: str) -> dict[str, int]:
    if labels and set(folders) <= set(labels):
        return {name: list(labels).index(name) for name in folders}
    return {name: index for index, name in enumerate(sorted(folders))}


def load_image_folder(path: Path, specs: Sequence[TensorSpec], labels: Sequence[str] | None = None) -> Dataset:
    """Decode every image under ``path/<class>/`` into the model's single image input, with labels."""
    from PIL import Image, UnidentifiedImageError

    origin = str(path)
    if len(specs) != 1:
        raise DataError(f"{origin}: an image folder feeds a model with one input; this one has {len(specs)}")
    spec = specs[0]
    channels, height, width, channels_last = _image_geometry(spec, origin)
    folders = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{origin}: no class folders (expected DIR/<class>/<image>)")
    index = _class_index(folders, labels, origin)
    pre = spec.preprocess
    scale = pre.scale if pre is not None else 1 / 255
    mean = np.asarray(pre.mean if pre is not None and pre.mean else (0.0,), np.float32)
    std = np.asarray(pre.std if pre is not None and pre.std else (1.0,), np.float32)
    images, targets = [], []
    for folder in folders:
        for file in sorted(p for p in (path / folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                with Image.open(file) as image:
                    image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
                    pixels = np.asarray(image, np.float32)
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise DataError(f"{file}: cannot decode image: {exc}") from None
            pixels = pixels.reshape(height, width, channels)
            pixels = (pixels * scale - mean) / std
            images.append(pixels if channels_last else pixels.transpose(2, 0, 1))
            targets.append(index[folder])
    if not images:
        raise DataError(f"{origin}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    arrays = conform(origin, {spec.name: np.stack(images).astype(spec.dtype)}, specs)
    return Dataset(arrays, np.asarray(targets, np.int64), origin)
