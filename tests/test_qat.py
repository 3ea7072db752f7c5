"""Quantization-aware training on the digits CNN: NNCF fake-quant, fine-tune, QDQ ONNX, ONNX Runtime."""

from __future__ import annotations

import torch  # noqa: I001  (first: see conftest.py)

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from torch import nn

from edgepack.compress.passes import PassContext
from edgepack.compress.qat import QatConfig, QatPass, export_qdq_onnx, fine_tune, fold_batchnorm, prepare_qat
from edgepack.data.dataset import Dataset
from edgepack.errors import InputError, ProfileError
from edgepack.exporters.ort.predictor import OrtPredictor
from edgepack.models.demo_digits import INPUT_NAME, OUTPUT_NAME, digits_splits, load_digits_cnn


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return digits_splits()


def _batches(images: np.ndarray, labels: np.ndarray | None, size: int = 64) -> list:
    x = torch.from_numpy(images)
    y = None if labels is None else torch.from_numpy(labels)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return [(x[i], None if y is None else y[i]) for i in order.split(size)]


def _top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def _torch_logits(module: nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(images)).numpy()


@dataclass(frozen=True)
class QatRun:
    fp32: nn.Module
    quantized: nn.Module
    onnx_path: Path


@pytest.fixture(scope="module")
def qat_run(splits, tmp_path_factory) -> QatRun:
    fp32 = load_digits_cnn()
    config = QatConfig(epochs=2, lr=1e-4, seed=0)
    quantized = prepare_qat(fp32, Dataset({INPUT_NAME: splits["calib"][0]}), config)
    fine_tune(quantized, _batches(*splits["train"]), None, config)
    path = export_qdq_onnx(
        quantized,
        {INPUT_NAME: splits["eval"][0][:1]},
        [INPUT_NAME],
        [OUTPUT_NAME],
        tmp_path_factory.mktemp("qat") / "digits_qdq.onnx",
    )
    return QatRun(fp32, quantized, path)


# ------------------------------------------------------------------------------------------- the QDQ graph


def test_exported_graph_is_qdq_with_per_channel_int8_weights(qat_run: QatRun) -> None:
    model = onnx.load(str(qat_run.onnx_path))
    onnx.checker.check_model(model)
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = list(model.graph.node)
    quant = [n for n in nodes if n.op_type == "QuantizeLinear"]
    dequant = [n for n in nodes if n.op_type == "DequantizeLinear"]
    assert quant and len(quant) == len(dequant)
    for node in quant + dequant:
        assert consts[node.input[2]].dtype in (np.int8, np.uint8), node.name

    producer = {out: n for n in nodes for out in n.output}
    weighted = [n for n in nodes if n.op_type in ("Conv", "Gemm")]
    assert len(weighted) == 4  # 3 convolutions + the classifier
    for node in weighted:
        dq = producer[node.input[1]]
        assert dq.op_type == "DequantizeLinear", f"{node.name}: weight not dequantized"
        q = producer[dq.input[0]]
        weight = consts[q.input[0]]
        scale = consts[dq.input[1]]
        axis = next(a.i for a in dq.attribute if a.name == "axis")
        assert axis == 0 and scale.shape == (weight.shape[0],), f"{node.name}: not per output channel"
        assert consts[dq.input[2]].dtype == np.int8 and not consts[dq.input[2]].any(), "symmetric int8 weights"
        source = producer[node.input[0]]
        while source.op_type in ("MaxPool", "Reshape", "Flatten"):  # int8-transparent ops
            source = producer[source.input[0]]
        assert source.op_type == "DequantizeLinear", f"{node.name}: activation not quantized"
    assert not any(n.op_type in ("BatchNormalization", "Constant") for n in nodes)

    # the overflow fix (default: first convolution) keeps that layer's stored int8 weights to 7 bits
    first = weighted[0]
    dq = producer[first.input[1]]
    ints = np.round(consts[producer[dq.input[0]].input[0]] / consts[dq.input[1]].reshape(-1, 1, 1, 1))
    assert np.abs(ints).max() <= 64, np.abs(ints).max()  # 255 * 64 * 2 < 2**15: no int16 saturation


def test_onnx_runtime_runs_real_int8_convolutions(qat_run: QatRun, tmp_path: Path) -> None:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(qat_run.onnx_path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert ops.count("QLinearConv") == 3, ops


def test_int8_onnx_accuracy_matches_fp32_and_torch_fake_quant(qat_run: QatRun, splits) -> None:
    images, labels = splits["eval"]
    ort_logits = OrtPredictor(qat_run.onnx_path)({INPUT_NAME: images})[OUTPUT_NAME]
    fake_quant = _torch_logits(qat_run.quantized, images)
    scores = {
        "fp32": _top1(_torch_logits(qat_run.fp32, images), labels),
        "qat_torch": _top1(fake_quant, labels),
        "qat_int8_ort": _top1(ort_logits, labels),
        "ort_vs_torch_agreement": float((ort_logits.argmax(1) == fake_quant.argmax(1)).mean()),
    }
    report = "digits eval top-1: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
    print(report)
    assert scores["qat_int8_ort"] >= scores["fp32"] - 0.01, report
    assert scores["ort_vs_torch_agreement"] >= 0.98, report
    # dynamic batch: one sample at a time gives the same answers
    single = OrtPredictor(qat_run.onnx_path)({INPUT_NAME: images[:1]})[OUTPUT_NAME]
    np.testing.assert_allclose(single, ort_logits[:1], atol=1e-5)


# ------------------------------------------------------------------------------------------- building blocks


def test_fold_batchnorm_keeps_outputs_and_class(splits) -> None:
    model = load_digits_cnn()
    folded = fold_batchnorm(model)
    assert type(folded) is type(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "the input is not changed"
    images = splits["eval"][0]
    np.testing.assert_allclose(_torch_logits(folded, images), _torch_logits(model, images), atol=1e-4)


def test_prepare_leaves_the_input_module_alone(splits) -> None:
    model = load_digits_cnn()
    before = copy.deepcopy(model.state_dict())
    quantized = prepare_qat(model, _batches(*splits["calib"]), QatConfig(calibration_samples=16))
    assert quantized is not model
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_export_refuses_a_module_without_fake_quant(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no fake-quantizers"):
        example = {INPUT_NAME: np.zeros((1, 1, 8, 8), np.float32)}
        export_qdq_onnx(load_digits_cnn(), example, [INPUT_NAME], [OUTPUT_NAME], tmp_path / "m.onnx")


def test_config_rejects_unknown_keys() -> None:
    assert QatPass().parse({"epochs": 1, "per_channel": False}) == QatConfig(epochs=1, per_channel=False)
    with pytest.raises(ProfileError, match="unknown key"):
        QatPass().parse({"epoch": 1})


# ------------------------------------------------------------------------------------------- the pass


def test_pass_needs_training_data_and_labels_or_a_step(splits) -> None:
    config = QatConfig(epochs=1, calibration_samples=16)
    with pytest.raises(InputError, match="training data"):
        QatPass().apply(load_digits_cnn(), config, PassContext())
    unlabelled = [(x, None) for x, _ in _batches(*splits["calib"])]
    with pytest.raises(InputError, match="never invents labels"):
        QatPass().apply(load_digits_cnn(), config, PassContext(train_data=unlabelled))


def test_pass_uses_the_users_train_step_and_calibration_data(splits) -> None:
    calls: list[int] = []

    def train_step(module: nn.Module, batch) -> torch.Tensor:
        images, labels = batch
        calls.append(len(images))
        return nn.functional.cross_entropy(module(images), labels)

    data = _batches(*splits["calib"])
    context = PassContext(calib=Dataset({INPUT_NAME: splits["calib"][0]}), train_data=data, train_step=train_step)
    config = QatConfig(epochs=1, calibration_samples=32, seed=3)
    first = QatPass().apply(load_digits_cnn(), config, context)
    assert sum(calls) == len(splits["calib"][0]) and not first.training
    second = QatPass().apply(load_digits_cnn(), config, context)
    first_state, second_state = first.state_dict(), second.state_dict()
    assert first_state.keys() == second_state.keys()
    assert all(torch.equal(first_state[k], second_state[k]) for k in first_state), "deterministic for a seed"


def test_a_step_that_returns_a_float_is_trusted_to_have_stepped(splits) -> None:
    config = QatConfig(epochs=1, calibration_samples=16)
    quantized = prepare_qat(load_digits_cnn(), _batches(*splits["calib"]), config)
    before = copy.deepcopy(quantized.state_dict())
    fine_tune(quantized, _batches(*splits["calib"]), lambda module, batch: 0.0, config)
    assert all(torch.equal(before[k], v) for k, v in quantized.state_dict().items())


def test_a_sequential_root_is_wrapped_and_exports(splits, tmp_path: Path) -> None:
    """NNCF hangs its quantizers on the root module; a root Sequential would run them as a layer."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    config = QatConfig(epochs=1, calibration_samples=32)
    quantized = fine_tune(prepare_qat(mlp, _batches(*splits["calib"]), config), _batches(*splits["calib"]), None, config)
    images = splits["eval"][0]
    path = export_qdq_onnx(quantized, {INPUT_NAME: images[:1]}, [INPUT_NAME], [OUTPUT_NAME], tmp_path / "mlp.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("QuantizeLinear") == 4 and ops.count("Gemm") == 2, ops
    # ONNX Runtime's reference QDQ semantics (no int8 kernel fusion: on non-VNNI CPUs its int8 Gemm may
    # saturate, see the qat module docstring) reproduce the torch fake-quant model
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ort_logits = session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]
    torch_logits = _torch_logits(quantized, images)
    assert float((ort_logits.argmax(1) == torch_logits.argmax(1)).mean()) >= 0.98
    assert np.abs(ort_logits - torch_logits).max() <= 0.05 * np.abs(torch_logits).max()
