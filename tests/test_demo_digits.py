"""The embedded ``demo:digits`` model: shipped weights, data splits, source specs, reproducibility."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgepack.data.dataset import Dataset
from edgepack.models import demo_digits
from edgepack.models.demo_digits import (
    METADATA_PATH,
    WEIGHTS_PATH,
    DigitsCNN,
    digits_split_indices,
    digits_splits,
    file_sha256,
    load_demo_source,
    load_digits_cnn,
)

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "scripts" / "train_demo_digits.py"


@pytest.fixture(scope="module")
def model() -> DigitsCNN:
    return load_digits_cnn()


@pytest.fixture(scope="module")
def splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return digits_splits()


def _top1(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        predicted = model(torch.from_numpy(images)).argmax(dim=1).numpy()
    return float((predicted == labels).mean())


def _row_set(images: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in images.reshape(len(images), -1)}


def test_shipped_weights_reach_target_accuracy(model: DigitsCNN, splits) -> None:
    assert not model.training
    images, labels = splits["eval"]
    accuracy = _top1(model, images, labels)
    assert accuracy >= 0.95
    # the recorded figure, up to one or two argmax near-ties on another CPU
    assert accuracy == pytest.approx(json.loads(METADATA_PATH.read_text())["test_accuracy"], abs=2 / 360 + 1e-9)


def test_weights_hash_matches_metadata() -> None:
    meta = json.loads(METADATA_PATH.read_text())
    assert meta["sha256"] == file_sha256(WEIGHTS_PATH)
    assert meta["weights"] == WEIGHTS_PATH.name
    for key in ("seed", "epochs", "test_accuracy", "torch_version"):
        assert key in meta
    assert meta["torch_version"].split("+")[0] == "2.14.1"


def test_splits_shapes_and_dtypes(splits) -> None:
    sizes = {name: len(labels) for name, (_, labels) in splits.items()}
    assert sizes == {"train": 1237, "calib": 200, "eval": 360}
    for images, labels in splits.values():
        assert images.dtype == np.float32 and images.shape[1:] == (1, 8, 8)
        assert labels.dtype == np.int64 and labels.shape == (len(images),)
        assert images.min() >= 0.0 and images.max() <= 1.0
        assert images.flags["C_CONTIGUOUS"]
    # stratified: every class appears in every split
    for _, labels in splits.values():
        assert set(np.unique(labels)) == set(range(10))


def test_splits_partition_the_dataset() -> None:
    """Index sets are disjoint and together cover every sample exactly once."""
    from sklearn.datasets import load_digits

    indices = digits_split_indices()
    train, calib, eval_ = (set(indices[k].tolist()) for k in ("train", "calib", "eval"))
    assert not train & eval_ and not calib & eval_ and not train & calib
    assert train | calib | eval_ == set(range(len(load_digits().target)))


def test_train_and_eval_share_no_images(splits) -> None:
    """Not even an exact-duplicate image of an eval sample is in the training data."""
    eval_rows = _row_set(splits["eval"][0])
    assert not _row_set(splits["train"][0]) & eval_rows
    assert not _row_set(splits["calib"][0]) & eval_rows


def test_splits_are_deterministic(splits) -> None:
    again = digits_splits()
    first, second = digits_split_indices(), digits_split_indices()
    for name, index in first.items():
        assert np.array_equal(index, second[name])
    for name, (images, labels) in splits.items():
        assert np.array_equal(images, again[name][0])
        assert np.array_equal(labels, again[name][1])


@pytest.mark.parametrize("batch", [1, 7])
def test_model_any_batch_size(model: DigitsCNN, splits, batch: int) -> None:
    images = torch.from_numpy(splits["eval"][0][:batch])
    with torch.no_grad():
        out = model(images)
        singles = torch.cat([model(images[i : i + 1]) for i in range(batch)])
    assert out.shape == (batch, 10) and out.dtype == torch.float32
    torch.testing.assert_close(out, singles, rtol=1e-5, atol=1e-5)


def test_demo_source_specs_match_model(splits) -> None:
    source = load_demo_source()
    assert (source.kind, source.uri, source.name) == ("demo", "demo:digits", "digits-cnn")
    assert source.sha256 == file_sha256(WEIGHTS_PATH)
    assert source.labels == [str(i) for i in range(10)]
    assert source.is_torch and isinstance(source.torch_module, DigitsCNN)
    assert not source.torch_module.training

    (spec_in,) = source.inputs
    (spec_out,) = source.outputs
    assert (spec_in.name, spec_in.shape, spec_in.dtype) == ("image", ("batch", 1, 8, 8), "float32")
    assert spec_in.layout == "NCHW"
    assert spec_in.preprocess is not None
    assert spec_in.preprocess.scale == pytest.approx(1 / 16)
    assert (spec_in.preprocess.mean, spec_in.preprocess.std) == ((0.0,), (1.0,))
    assert (spec_out.name, spec_out.shape, spec_out.dtype) == ("logits", ("batch", 10), "float32")

    for name in ("calib", "eval"):
        data = source.extra[name]
        assert isinstance(data, Dataset)
        assert data.origin == f"demo:digits/{name}"
        assert np.array_equal(data.inputs["image"], splits[name][0])
        assert np.array_equal(data.labels, splits[name][1])
        batch = data.batch(0)["image"]
        assert spec_in.matches(batch)
        with torch.no_grad():
            out = source.torch_module(torch.from_numpy(batch)).numpy()
        assert spec_out.matches(out) and out.shape == spec_out.concrete_shape(1)
        assert str(out.dtype) == spec_out.dtype


def test_preprocess_spec_reproduces_split_images(splits) -> None:
    """Applying the declared preprocess to raw sklearn pixels gives exactly the split arrays."""
    from sklearn.datasets import load_digits

    pre = demo_digits.PREPROCESS
    raw = load_digits().images.astype(np.float32).reshape(-1, 1, 8, 8)
    processed = (raw * np.float32(pre.scale) - np.float32(pre.mean[0])) / np.float32(pre.std[0])
    assert _row_set(splits["eval"][0]) <= _row_set(processed)


def test_onnx_export_uses_portable_ops_and_free_batch(model: DigitsCNN, splits, tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort
    path = tmp_path / "digits.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
        dynamo=True,
        verbose=False,
    )
    graph = onnx.load(str(path)).graph
    ops = {node.op_type for node in graph.node}
    assert ops <= {"Conv", "BatchNormalization", "Relu", "MaxPool", "AveragePool", "Reshape", "Gemm", "MatMul", "Add"}
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images, labels = splits["eval"]
    logits = session.run(None, {"image": images})[0]
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_training_script_reproduces_accuracy(tmp_path: Path) -> None:
    """Retraining from scratch (same seed) lands within tolerance of the recorded accuracy."""
    result = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), "--out-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    shipped = json.loads(METADATA_PATH.read_text())
    fresh = json.loads((tmp_path / METADATA_PATH.name).read_text())
    assert fresh["seed"] == shipped["seed"] and fresh["epochs"] == shipped["epochs"]
    assert fresh["test_accuracy"] >= 0.95
    assert fresh["test_accuracy"] == pytest.approx(shipped["test_accuracy"], abs=0.015)
    assert fresh["sha256"] == file_sha256(tmp_path / WEIGHTS_PATH.name)
    retrained = load_digits_cnn(tmp_path / WEIGHTS_PATH.name)
    images, labels = digits_splits()["eval"]
    assert _top1(retrained, images, labels) == pytest.approx(fresh["test_accuracy"], abs=1e-9)
