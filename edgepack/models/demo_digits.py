"""``demo:digits`` — the embedded default model: a small CNN for scikit-learn's 8x8 digits.

The weights ship in ``weights/digits_cnn.safetensors`` beside this module; they were produced by
``scripts/train_demo_digits.py`` and the run's facts (seed, epochs, accuracy, torch version, file
hash) are recorded in ``weights/digits_cnn.json``.

Data split (deterministic, stratified, ``random_state=0``) of the 1,797 samples:

* ``eval``  — 360 samples, never seen in training; the accuracy gate's data.
* ``calib`` — 200 samples drawn from the non-eval rest; disjoint from both ``train`` and ``eval``.
* ``train`` — the remaining 1,237 samples.

All images are preprocessed as the input spec says: sklearn's 0..16 pixel values times 1/16 -> 0..1,
``float32``, NCHW ``(N, 1, 8, 8)``.

Only ops that every edge runtime handles well are used: 3x3 convolutions with padding 1, BatchNorm,
ReLU, 2x2 max pooling, a fixed-size 4x4 average pool, a reshape with a constant shape, and a Linear.
The batch dimension is free.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgepack.hashing import file_sha256
from edgepack.models.source import ModelSource, Preprocess, TensorSpec

WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_PATH = WEIGHTS_DIR / "digits_cnn.safetensors"
"""The shipped weights (a safetensors state dict of :class:`DigitsCNN`)."""
METADATA_PATH = WEIGHTS_DIR / "digits_cnn.json"
"""Training metadata of the shipped weights (seed, epochs, accuracy, torch version, sha256)."""

URI = "demo:digits"
NAME = "digits-cnn"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
NUM_CLASSES = 10
LABELS = [str(i) for i in range(NUM_CLASSES)]
PIXEL_SCALE = 1.0 / 16.0
PREPROCESS = Preprocess(scale=PIXEL_SCALE, mean=(0.0,), std=(1.0,), description="sklearn digits 0..16 -> 0..1")

SPLIT_SEED = 0
EVAL_SIZE = 360
CALIB_SIZE = 200


class DigitsCNN(nn.Module):
    """Conv(1->16)-BN-ReLU, Conv(16->32)-BN-ReLU, MaxPool2, Conv(32->64)-BN-ReLU, AvgPool4, Linear(64->10).

    Input ``(N, 1, 8, 8)`` float32 in 0..1; output ``(N, 10)`` logits.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(32, 64, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.AvgPool2d(4),  # 4x4 -> 1x1, fixed size (no adaptive pooling)
        )
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 10)`` for images ``(N, 1, 8, 8)``."""
        features = self.features(image)
        return self.classifier(features.reshape(-1, 64))


def load_digits_cnn(path: Path = WEIGHTS_PATH) -> DigitsCNN:
    """The shipped :class:`DigitsCNN` (or the weights at ``path``), in eval mode on the CPU."""
    from safetensors.torch import load_file

    model = DigitsCNN()
    model.load_state_dict(load_file(str(path), device="cpu"), strict=True)
    return model.eval()


def digits_split_indices() -> dict[str, np.ndarray]:
    """Row indices into ``sklearn.datasets.load_digits()`` of the ``train`` / ``calib`` / ``eval`` splits.

    Deterministic and stratified by class (``random_state=0``); the three index sets are disjoint and
    together cover all 1,797 samples.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    labels = load_digits().target
    rest, eval_idx = train_test_split(
        np.arange(len(labels)), test_size=EVAL_SIZE, stratify=labels, random_state=SPLIT_SEED
    )
    train_idx, calib_idx = train_test_split(
        rest, test_size=CALIB_SIZE, stratify=labels[rest], random_state=SPLIT_SEED
    )
    return {"train": train_idx, "calib": calib_idx, "eval": eval_idx}


def digits_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The deterministic ``train`` / ``calib`` / ``eval`` splits as ``(images, labels)``.

    Images are float32 ``(N, 1, 8, 8)`` already preprocessed (0..1); labels are int64 ``(N,)``.
    The splits are those of :func:`digits_split_indices` (disjoint, stratified; sizes in the module
    docstring).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype(np.float32) * np.float32(PIXEL_SCALE)).reshape(-1, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    return {name: (images[index], labels[index]) for name, index in digits_split_indices().items()}


def load_demo_source() -> ModelSource:
    """The ``demo:digits`` :class:`ModelSource`, with its calibration and eval data in ``extra``."""
    from edgepack.data.dataset import Dataset

    splits = digits_splits()
    extra = {
        split: Dataset(inputs={INPUT_NAME: images}, labels=labels, origin=f"{URI}/{split}")
        for split, (images, labels) in splits.items()
        if split in ("calib", "eval")
    }
    return ModelSource(
        kind="demo",
        uri=URI,
        name=NAME,
        sha256=file_sha256(WEIGHTS_PATH),
        inputs=[TensorSpec(INPUT_NAME, ("batch", 1, 8, 8), "float32", layout="NCHW", preprocess=PREPROCESS)],
        outputs=[TensorSpec(OUTPUT_NAME, ("batch", NUM_CLASSES), "float32")],
        torch_module=load_digits_cnn(),
        labels=list(LABELS),
        extra=extra,
    )
