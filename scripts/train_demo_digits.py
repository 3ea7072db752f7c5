#!/usr/bin/env python
"""Train the ``demo:digits`` CNN and write its weights + training metadata.

Deterministic on the CPU for a fixed seed (single thread, deterministic algorithms, seeded shuffling);
runs in a few seconds. Writes ``digits_cnn.safetensors`` and ``digits_cnn.json`` into ``--out-dir``
(default: the package's ``edgepack/models/weights``).

    python scripts/train_demo_digits.py [--seed 0] [--epochs 20] [--out-dir DIR]

The eval split is only scored after training; it never influences the weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

try:
    import edgepack  # noqa: F401
except ImportError:  # run from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgepack.models.demo_digits import (  # noqa: E402
    METADATA_PATH,
    WEIGHTS_PATH,
    DigitsCNN,
    digits_splits,
    file_sha256,
)

DEFAULT_SEED = 0
DEFAULT_EPOCHS = 20
BATCH_SIZE = 32
LEARNING_RATE = 3e-3


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on preprocessed images."""
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(images)).argmax(dim=1).numpy()
    return float((predicted == labels).mean())


def train(seed: int = DEFAULT_SEED, epochs: int = DEFAULT_EPOCHS) -> tuple[DigitsCNN, dict[str, Any]]:
    """Train a :class:`DigitsCNN` on the ``train`` split; return it (eval mode) and its metrics."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(seed, epochs)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(seed: int, epochs: int) -> tuple[DigitsCNN, dict[str, Any]]:
    torch.manual_seed(seed)
    splits = digits_splits()
    train_x, train_y = (torch.from_numpy(a) for a in splits["train"])

    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    steps_per_epoch = (len(train_x) + BATCH_SIZE - 1) // BATCH_SIZE
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LEARNING_RATE, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    shuffler = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=shuffler)
        for start in range(0, len(order), BATCH_SIZE):
            index = order[start : start + BATCH_SIZE]
            optimizer.zero_grad()
            loss = loss_fn(model(train_x[index]), train_y[index])
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()

    metrics = {split: accuracy(model, images, labels) for split, (images, labels) in splits.items()}
    return model, {
        "seed": seed,
        "epochs": epochs,
        "batch_size": BATCH_SIZE,
        "optimizer": f"Adam, OneCycleLR max_lr={LEARNING_RATE}",
        "split": "sklearn load_digits, stratified train_test_split random_state=0: eval 360, then calib 200 "
        "from the rest; train = the remaining samples; all three disjoint; eval never used in training",
        "split_sizes": {split: len(labels) for split, (_, labels) in splits.items()},
        "train_accuracy": metrics["train"],
        "calib_accuracy": metrics["calib"],
        "test_accuracy": metrics["eval"],
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def save(model: DigitsCNN, metrics: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``digits_cnn.safetensors`` and ``digits_cnn.json`` into ``out_dir``; return both paths."""
    import sklearn
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_PATH.name
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(weights), metadata={"format": "pt"})
    weights.chmod(0o644)  # safetensors creates the file owner-only
    meta = {
        "model": "DigitsCNN",
        "uri": "demo:digits",
        "weights": weights.name,
        **metrics,
        "torch_version": torch.__version__,
        "sklearn_version": sklearn.__version__,
        "numpy_version": np.__version__,
        "sha256": file_sha256(weights),
        "script": "scripts/train_demo_digits.py",
    }
    meta_path = out_dir / METADATA_PATH.name
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return weights, meta_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--out-dir", type=Path, default=WEIGHTS_PATH.parent)
    args = parser.parse_args(argv)
    model, metrics = train(args.seed, args.epochs)
    _, meta_path = save(model, metrics, args.out_dir)
    print(json.dumps(json.loads(meta_path.read_text(encoding="utf-8")), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
