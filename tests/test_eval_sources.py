"""Evaluation data beyond .npz: an ImageFolder directory, a user metric function, top-k and cosine metrics.

All on demo:digits with sklearn's digits images (written as PNG files by the test) and ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgepack import api
from edgepack.compress.gate import parse_metric, topk_accuracy
from edgepack.errors import DataError, InputError
from edgepack.models.loaders import load_source
from edgepack.models.reference import reference_predictor

PER_CLASS = 12


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    picks = np.concatenate([np.flatnonzero(digits.target == c)[-PER_CLASS:] for c in range(10)])
    return digits.images[picks], digits.target[picks]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """DIR/<digit>/<n>.png with the raw 0..16 pixel values the demo's preprocessing (x / 16) expects."""
    root = tmp_path_factory.mktemp("digits_folder")
    images, labels = _digits()
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = root / str(label)
        folder.mkdir(exist_ok=True)
        Image.fromarray(image.astype(np.uint8), mode="L").save(folder / f"{index:04d}.png")
    return root


def _reference_logits() -> tuple[np.ndarray, np.ndarray]:
    source = load_source("demo:digits")
    images, labels = _digits()
    predict = reference_predictor(source)
    logits = np.concatenate([predict({"image": (img[None, None] / 16).astype(np.float32)})["logits"] for img in images])
    return logits, labels


def test_image_folder_eval_gives_the_same_accuracy_as_the_arrays(image_folder, tmp_path):
    result = api.export("demo:digits", ["host-ort"], eval_data=image_folder, out=tmp_path, recipe_chain=["fp32"])
    gate = result.manifest["targets"]["host-ort"]["gate"]
    logits, labels = _reference_logits()
    assert gate["kind"] == "accuracy" and gate["metric"] == "top1" and gate["samples"] == 10 * PER_CLASS
    assert gate["baseline"] == pytest.approx(float(np.mean(logits.argmax(1) == labels)))
    assert result.manifest["data"]["evaluation"] == str(image_folder)


def test_topk_and_cosine_metrics(image_folder, tmp_path):
    top3 = api.export("demo:digits", ["host-ort"], eval_data=image_folder, metric="top3", out=tmp_path / "a",
                      recipe_chain=["fp32"]).manifest["targets"]["host-ort"]["gate"]
    logits, labels = _reference_logits()
    assert top3["metric"] == "top3" and top3["baseline"] == pytest.approx(topk_accuracy(logits, labels, 3))
    assert top3["baseline"] >= float(np.mean(logits.argmax(1) == labels))
    cosine = api.export("demo:digits", ["host-ort"], eval_data=image_folder, metric="cosine", out=tmp_path / "b",
                        recipe_chain=["int8"], max_slowdown=1.0).manifest["targets"]["host-ort"]["gate"]
    assert cosine["kind"] == "fidelity" and cosine["metric"] == "cosine_vs_fp32" and 0.9 < cosine["value"] <= 1.0


def test_topk_accuracy_by_hand():
    logits = np.array([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])
    labels = np.array([2, 1, 0])
    assert topk_accuracy(logits, labels, 1) == 0.0
    assert topk_accuracy(logits, labels, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(logits, labels, 3) == 1.0
    assert [parse_metric(m) for m in ("top-5", "TOP1", "cosine")] == ["top5", "top1", "cosine"]
    with pytest.raises(InputError, match="--metric top0"):
        parse_metric("top0")


EVAL_FILE = '''
import numpy as np
from sklearn.datasets import load_digits

CALLS = []

def accuracy(predict):
    digits = load_digits()
    images, labels = digits.images[-100:], digits.target[-100:]
    batch = {"image": (images[:, None] / 16).astype(np.float32)}
    logits = np.concatenate([predict({"image": batch["image"][i:i + 1]})["logits"] for i in range(len(images))])
    CALLS.append(1)
    return float(np.mean(logits.argmax(1) == labels))

def broken(predict):
    raise RuntimeError("the eval server is down")
'''


def test_user_metric_function_scores_source_and_artifact(tmp_path):
    (tmp_path / "my_eval.py").write_text(EVAL_FILE)
    result = api.export("demo:digits", ["host-ort"], eval_data=f"{tmp_path / 'my_eval.py'}:accuracy", out=tmp_path / "out",
                        recipe_chain=["int8", "fp32"], max_slowdown=1.0)
    entry = result.manifest["targets"]["host-ort"]
    gate = entry["gate"]
    assert gate["kind"] == "accuracy" and gate["metric"] == "my_eval:accuracy"
    assert 0.9 < gate["baseline"] <= 1.0 and abs(gate["baseline"] - gate["value"]) <= 0.05
    assert result.manifest["data"]["evaluation"] == "user metric my_eval:accuracy"


def test_a_failing_user_metric_fails_the_target_with_its_message(tmp_path):
    (tmp_path / "my_eval.py").write_text(EVAL_FILE)
    result = api.export("demo:digits", ["host-ort"], eval_data=f"{tmp_path / 'my_eval.py'}:broken", out=tmp_path / "out",
                        recipe_chain=["fp32"])
    entry = result.manifest["targets"]["host-ort"]
    assert entry["status"] == "failed" and "the eval server is down" in entry["error"]


def test_a_missing_user_metric_is_an_input_error(tmp_path):
    (tmp_path / "my_eval.py").write_text(EVAL_FILE)
    with pytest.raises(DataError, match="'nope' is not a function"):
        api.export("demo:digits", ["host-ort"], eval_data=f"{tmp_path / 'my_eval.py'}:nope", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        api.export("demo:digits", ["host-ort"], eval_data=tmp_path / "empty", out=tmp_path / "out")
    (tmp_path / "bad" / "3").mkdir(parents=True)
    (tmp_path / "bad" / "3" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot decode image"):
        api.export("demo:digits", ["host-ort"], eval_data=tmp_path / "bad", out=tmp_path / "out")
