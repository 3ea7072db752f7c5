"""Passes that train (QAT, distillation) through the whole export flow, driven from the Python API."""

from __future__ import annotations

import onnx
import pytest
import torch

from edgepack import api
from edgepack.data.dataset import Dataset
from edgepack.models.demo_digits import digits_splits


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def train_set() -> Dataset:
    images, labels = digits_splits()["train"]
    return Dataset({"image": images}, labels, "digits/train")


def test_qat_recipe_ships_qdq_int8(tmp_path, train_set):
    result = api.export("demo:digits", ["host-ort"], out=tmp_path, recipe_chain=["int8-qat"], train_data=train_set,
                        max_slowdown=1.0)
    entry = result.manifest["targets"]["host-ort"]
    assert entry["status"] == "ok", entry["error"]
    assert entry["artifact"]["settings"]["mode"] == "qat-qdq"
    assert entry["gate"]["kind"] == "accuracy" and entry["gate"]["drop"] <= 0.01, entry["gate"]
    ops = {node.op_type for node in onnx.load(str(result.bundle / entry["artifact"]["path"])).graph.node}
    assert ops & {"QuantizeLinear", "QLinearConv", "DequantizeLinear"}, ops


def test_qat_without_training_data_is_a_clear_attempt_error(tmp_path):
    result = api.export("demo:digits", ["host-ort"], out=tmp_path, recipe_chain=["int8-qat", "fp32"])
    first = result.manifest["targets"]["host-ort"]["attempts"][0]
    assert first["status"] == "error" and "train" in first["reason"].lower()
    assert result.manifest["targets"]["host-ort"]["recipe"] == "fp32"


DISTILL = """
name = "distill-mlp"
precision = "fp32"
[[passes]]
name = "distill"
options = { temperature = 2.0, alpha = 0.5, epochs = 15, lr = 0.01 }
"""


def test_distilled_student_ships_through_the_gate(tmp_path, train_set):
    recipe = tmp_path / "distill.toml"
    recipe.write_text(DISTILL)

    def student() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))

    result = api.export("demo:digits", ["host-ort"], out=tmp_path / "out", recipe_chain=[recipe],
                        train_data=train_set, pass_options={"student": student}, max_drop=0.05)
    entry = result.manifest["targets"]["host-ort"]
    assert entry["status"] == "ok", entry["error"]
    assert entry["gate"]["value"] >= 0.94, entry["gate"]
    assert entry["artifact"]["bytes"] < 30_000  # the 2.4k-parameter student, not the 24k-parameter teacher
