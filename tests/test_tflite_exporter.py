"""TFLite exporter: real onnx2tf conversions in the worker subprocess, run with the real LiteRT interpreter.

Outputs are compared numerically with the torch source (quantized ones: top-1 on the demo digits model's
real labels). torch is imported first on purpose (importing TensorFlow before torch crashes; this process
must never import TensorFlow at all).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch  # noqa: I001 - torch before anything that could pull TensorFlow
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from torch import nn

from edgepack.compress.recipe import Recipe, load_recipes
from edgepack.data.dataset import Dataset
from edgepack.errors import ExportError, UnsupportedError
from edgepack.exporters.base import NotRunnable, Predictor
from edgepack.exporters.tflite import quant as tflite_quant
from edgepack.exporters.tflite import worker
from edgepack.exporters.tflite.exporter import (
    CALIB_SAMPLES,
    LITERT_TORCH_MISSING,
    TfliteExporter,
    _onnx2tf_job,
    flex_ops,
    run_worker,
    summarize_failure,
    tflite_operators,
)
from edgepack.compress.sensitivity import quantizable_layers
from edgepack.exporters.onnx.hub import export_onnx
from edgepack.exporters.tflite.model_io import dequantize, quantize
from edgepack.exporters.tflite.layers import LayerMap, float_op_outputs, match_layers
from edgepack.models.source import ModelSource, Preprocess, QuantParams, TensorSpec
from edgepack.targets.schema import TargetProfile

HAS_LITERT_TORCH = importlib.util.find_spec("litert_torch") is not None
PREPROCESS = Preprocess(scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), description="rgb")


# --------------------------------------------------------------------------------------------------
# Models and fixtures
# --------------------------------------------------------------------------------------------------


class SmallCNN(nn.Module):
    """Conv-BN-ReLU-MaxPool, Conv-BN-ReLU, global average pool, Linear: (N, 3, 32, 32) -> (N, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, stride=2),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(16, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image).flatten(1))


class TwoInOut(nn.Module):
    """Two inputs (a vector and a 3-D sequence) and two outputs of different sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.vector = nn.Linear(16, 12)
        self.step = nn.Linear(5, 12)
        self.head = nn.Linear(12, 4)

    def forward(self, features: torch.Tensor, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.tanh(self.vector(features) + self.step(seq).mean(dim=1))
        return self.head(hidden), hidden


class BitwiseNot(nn.Module):
    """Exports to ONNX ``BitwiseNot`` (dynamo path), an op onnx2tf does not implement."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bitwise_not(x) * 2


def _state_sha(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def _torch_source(module: nn.Module, name: str, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> ModelSource:
    module.eval()
    return ModelSource("factory", f"test:{name}", name, _state_sha(module), inputs, outputs, torch_module=module)


def _seeded_cnn() -> SmallCNN:
    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them is really tested
        for bn in (model.features[1], model.features[5]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def profile() -> TargetProfile:
    return TargetProfile.model_validate(
        {
            "id": "test-litert-cpu",
            "name": "Test LiteRT CPU",
            "family": "test",
            "runtime": "tflite",
            "format": "tflite",
            "memory_mb": 512,
            "input_layout": "NHWC",
            "recipes": ["fp16", "fp32"],
            "accelerators": {
                "cpu": {"kind": "cpu", "precisions": ["fp32", "fp16"], "op_vocabulary": "tflite", "all_ops": True}
            },
        }
    )


@pytest.fixture(scope="module")
def named_recipes() -> dict[str, Recipe]:
    book = load_recipes()
    return {name: book.get(name) for name in ("fp32", "fp16")}


@pytest.fixture(scope="module")
def exporter() -> TfliteExporter:
    return TfliteExporter(timeout_s=300)


@pytest.fixture(scope="module")
def tf_loaded_before() -> bool:
    return "tensorflow" in sys.modules


@pytest.fixture(scope="module")
def cnn_source() -> ModelSource:
    spec = TensorSpec("image", ("batch", 3, 32, 32), "float32", layout="NCHW", preprocess=PREPROCESS)
    return _torch_source(_seeded_cnn(), "cnn", [spec], [TensorSpec("logits", ("batch", 10))])


@pytest.fixture(scope="module")
def cnn_calib() -> Dataset:
    rng = np.random.default_rng(7)
    return Dataset({"image": rng.standard_normal((8, 3, 32, 32)).astype(np.float32)}, origin="test/calib")


@pytest.fixture(scope="module")
def cnn_fp32(exporter, cnn_source, profile, named_recipes, cnn_calib, tmp_path_factory, tf_loaded_before):
    return exporter.export(cnn_source, profile, named_recipes["fp32"], cnn_calib, tmp_path_factory.mktemp("cnn_fp32"))


@pytest.fixture(scope="module")
def cnn_fp16(exporter, cnn_source, profile, named_recipes, cnn_calib, tmp_path_factory, cnn_fp32):
    return exporter.export(cnn_source, profile, named_recipes["fp16"], cnn_calib, tmp_path_factory.mktemp("cnn_fp16"))


def _predictor(exporter: TfliteExporter, artifact, source: ModelSource) -> Predictor:
    predictor = exporter.predictor(artifact, source)
    assert not isinstance(predictor, NotRunnable), predictor
    return predictor


def _torch_out(module: nn.Module, *arrays: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
    with torch.inference_mode():
        result = module(*(torch.from_numpy(a) for a in arrays))
    if isinstance(result, tuple):
        return tuple(r.numpy() for r in result)
    return result.numpy()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --------------------------------------------------------------------------------------------------
# onnx2tf path
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fp32_matches_torch(exporter, cnn_source, cnn_fp32):
    predictor = _predictor(exporter, cnn_fp32, cnn_source)
    rng = np.random.default_rng(1)
    for _ in range(5):
        x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
        got = predictor({"image": x})["logits"]
        ref = _torch_out(cnn_source.torch_module, x)
        assert got.shape == ref.shape == (1, 10)
        assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) < 1e-4


@pytest.mark.slow
def test_fp32_artifact_record(cnn_fp32, cnn_source):
    artifact = cnn_fp32
    assert artifact.path.name == "model.tflite" and artifact.path.is_file()
    assert artifact.files == (artifact.path,)
    assert (artifact.format, artifact.runtime) == ("tflite", "tflite")
    assert (artifact.precision, artifact.recipe) == ("fp32", "fp32")
    assert artifact.converter == "onnx2tf"
    assert artifact.target_id == "test-litert-cpu"
    for package in ("onnx2tf", "tensorflow-cpu", "ai-edge-litert", "onnx", "onnxslim", "torch"):
        assert artifact.toolchain[package]
    assert artifact.bytes > 1000 and len(artifact.sha256()) == 64
    assert flex_ops(artifact.path) == []


@pytest.mark.slow
def test_artifact_input_is_nhwc_and_keeps_preprocess(cnn_fp32):
    (spec,) = cnn_fp32.inputs
    assert spec.shape == (1, 32, 32, 3)
    assert spec.layout == "NHWC"
    assert spec.dtype == "float32"
    assert spec.preprocess == PREPROCESS
    assert cnn_fp32.settings["input_map"] == {"image": {"name": spec.name, "position": 0, "perm": [0, 2, 3, 1]}}
    (out,) = cnn_fp32.outputs
    assert out.shape == (1, 10)
    assert cnn_fp32.settings["output_map"]["logits"]["perm"] == [0, 1]


@pytest.mark.slow
def test_predictor_splits_larger_batches(exporter, cnn_source, cnn_fp32):
    x = np.random.default_rng(2).standard_normal((3, 3, 32, 32)).astype(np.float32)
    got = _predictor(exporter, cnn_fp32, cnn_source)({"image": x})["logits"]
    np.testing.assert_allclose(got, _torch_out(cnn_source.torch_module, x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_fp16_close_to_torch_and_reuses_conversion(exporter, cnn_source, cnn_fp16, cnn_fp32):
    assert cnn_fp16.precision == "fp16" and cnn_fp16.converter == "onnx2tf"
    assert cnn_fp16.bytes < cnn_fp32.bytes
    # same ONNX bytes, same calibration: onnx2tf wrote both files in the fp32 run; no second worker
    assert not (cnn_fp16.path.parent / "onnx2tf" / "worker.log").exists()
    predictor = _predictor(exporter, cnn_fp16, cnn_source)
    rng = np.random.default_rng(3)
    for _ in range(5):
        x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
        assert _cosine(predictor({"image": x})["logits"], _torch_out(cnn_source.torch_module, x)) > 0.999


@pytest.mark.slow
def test_parent_process_never_imports_tensorflow(cnn_fp16, tf_loaded_before):
    if tf_loaded_before:
        pytest.skip("another test module imported TensorFlow into this process first")
    assert "tensorflow" not in sys.modules
    assert "onnx2tf" not in sys.modules


@pytest.mark.slow
def test_two_inputs_two_outputs(exporter, profile, named_recipes, tmp_path):
    torch.manual_seed(1)
    source = _torch_source(
        TwoInOut(),
        "two",
        [TensorSpec("features", ("batch", 16)), TensorSpec("seq", ("batch", 6, 5), layout="NTC")],
        [TensorSpec("score", ("batch", 4)), TensorSpec("hidden", ("batch", 12))],
    )
    artifact = exporter.export(source, profile, named_recipes["fp32"], None, tmp_path)
    assert [s.shape for s in artifact.inputs] == [(1, 16), (1, 6, 5)]  # 3-D inputs keep their layout
    assert artifact.inputs[1].layout == "NTC"
    predictor = _predictor(exporter, artifact, source)
    rng = np.random.default_rng(4)
    for _ in range(3):
        f = rng.standard_normal((1, 16)).astype(np.float32)
        s = rng.standard_normal((1, 6, 5)).astype(np.float32)
        got = predictor({"features": f, "seq": s})
        score, hidden = _torch_out(source.torch_module, f, s)
        np.testing.assert_allclose(got["score"], score, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got["hidden"], hidden, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------------------------------


def test_unsupported_precision_is_refused(exporter, cnn_source, profile, tmp_path):
    int4 = Recipe(name="int4-weight", precision="int4-weight")
    reason = exporter.supports(int4)
    assert reason and "int4-weight" in reason
    for precision in ("fp16", "fp32", "int8", "int8-dynamic"):
        assert exporter.supports(Recipe(name=precision, precision=precision)) is None
    with pytest.raises(UnsupportedError, match="int4-weight"):
        exporter.export(cnn_source, profile, int4, None, tmp_path)


def _bitwise_not_onnx(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("BitwiseNot", ["x"], ["y"], name="invert")],
        "bitwise",
        [helper.make_tensor_value_info("x", TensorProto.INT32, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.mark.slow
def test_failing_onnx_gives_one_line_export_error(exporter, profile, named_recipes, tmp_path):
    path = _bitwise_not_onnx(tmp_path / "bitwise.onnx")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    source = ModelSource(
        "onnx", str(path), "bitwise", digest, [TensorSpec("x", (1, 8), "int32")], [TensorSpec("y", (1, 8), "int32")],
        onnx_path=path,
    )
    with pytest.raises(ExportError) as info:
        exporter.export(source, profile, named_recipes["fp32"], None, tmp_path / "work")
    message = str(info.value)
    assert "\n" not in message
    assert "onnx2tf" in message and "BitwiseNot" in message
    assert "no torch module" in message
    assert "worker.log" in message


@pytest.mark.slow
def test_torch_source_tries_litert_torch_after_onnx2tf(exporter, profile, named_recipes, tmp_path):
    source = _torch_source(BitwiseNot(), "bitwise-torch", [TensorSpec("x", ("batch", 8), "int32")],
                           [TensorSpec("y", ("batch", 8), "int32")])
    if not HAS_LITERT_TORCH:
        with pytest.raises(ExportError) as info:
            exporter.export(source, profile, named_recipes["fp32"], None, tmp_path)
        message = str(info.value)
        assert "\n" not in message
        assert "onnx2tf" in message and "BitwiseNot" in message
        assert LITERT_TORCH_MISSING in message
        return
    artifact = exporter.export(source, profile, named_recipes["fp32"], None, tmp_path)
    assert artifact.converter == "litert-torch"
    x = np.arange(8, dtype=np.int32).reshape(1, 8)
    got = _predictor(exporter, artifact, source)({"x": x})["y"]
    np.testing.assert_array_equal(got, _torch_out(source.torch_module, x))


def test_litert_torch_path_conditions(named_recipes):
    int_specs = ([TensorSpec("x", (1, 8), "int32")], [TensorSpec("y", (1, 8), "int32")])
    torch_source = _torch_source(BitwiseNot(), "bitwise", *int_specs)
    fp16 = TfliteExporter._litert_unavailable(torch_source, named_recipes["fp16"])
    assert fp16 is not None and "float16" in fp16
    fp32 = TfliteExporter._litert_unavailable(torch_source, named_recipes["fp32"])
    assert fp32 == (None if HAS_LITERT_TORCH else LITERT_TORCH_MISSING)
    onnx_only = ModelSource("onnx", "x.onnx", "x", "0" * 64, *int_specs, onnx_path=Path("x.onnx"))
    assert "no torch module" in TfliteExporter._litert_unavailable(onnx_only, named_recipes["fp32"])


def test_summarize_failure_picks_the_meaningful_line():
    log = "\n".join(
        [
            "I0000 00:00:1.0 123 cudart_stub.cc:31] Could not find cuda drivers on your machine",
            "\x1b[31mERROR:\x1b[0m The trace log is below.",
            "Traceback (most recent call last):",
            '  File "x.py", line 1, in <module>',
            "ValueError: Dimensions must be equal, but are 3 and 4",
            "\x1b[31mERROR:\x1b[0m input_onnx_file_path: model.onnx",
            "\x1b[31mERROR:\x1b[0m onnx_op_name: wa/Add",
            "\x1b[31mERROR:\x1b[0m Read this and deal with it. https://github.com/PINTO0309/onnx2tf",
        ]
    )
    assert summarize_failure(log) == "ValueError: Dimensions must be equal, but are 3 and 4 [ONNX node wa/Add]"
    exception = "ModuleNotFoundError: No module named 'onnx2tf.ops.Foo'"
    missing_op = f"\x1b[31mERROR:\x1b[0m Foo OP is not yet implemented.\n{exception}"
    assert summarize_failure(missing_op) == f"Foo OP is not yet implemented. ({exception})"
    assert summarize_failure("", "worker killed by SIGKILL") == "worker killed by SIGKILL"


# --------------------------------------------------------------------------------------------------
# Worker: network guard, sample images, ONNX preparation
# --------------------------------------------------------------------------------------------------

GUARD_SCRIPT = textwrap.dedent(
    """
    import socket, sys, threading
    from edgepack.exporters.tflite.worker import NetworkBlockedError, install_network_guard
    install_network_guard()
    results = []
    for label, attempt in [
        ("create_connection", lambda: socket.create_connection(("8.8.8.8", 53), timeout=2)),
        ("connect", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(("8.8.8.8", 53))),
        ("connect_ex", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).connect_ex(("1.1.1.1", 53))),
        ("sendto", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53))),
        ("getaddrinfo", lambda: socket.getaddrinfo("github.com", 443)),
        ("ipv6", lambda: socket.create_connection(("2001:4860:4860::8888", 53), timeout=2)),
    ]:
        try:
            attempt()
            results.append(label + ":allowed")
        except NetworkBlockedError:
            results.append(label + ":blocked")
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    client = socket.create_connection(("localhost", port), timeout=2)
    conn, _ = server.accept()
    client.sendall(b"ok")
    results.append("loopback:" + conn.recv(2).decode())
    import edgepack.exporters.tflite.exporter, ai_edge_litert.interpreter  # the parent imports these, never TF
    results.append("tf:" + str(any(m.startswith(("tensorflow", "onnx2tf")) for m in sys.modules)))
    print(" ".join(results))
    """
)


def test_worker_network_guard_blocks_non_loopback():
    completed = subprocess.run(
        [sys.executable, "-c", GUARD_SCRIPT], capture_output=True, text=True, timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert completed.returncode == 0, completed.stderr
    words = completed.stdout.split()
    assert words == [
        "create_connection:blocked",
        "connect:blocked",
        "connect_ex:blocked",
        "sendto:blocked",
        "getaddrinfo:blocked",
        "ipv6:blocked",
        "loopback:ok",
        "tf:False",
    ]


def test_worker_failures_and_timeouts_are_one_line(tmp_path):
    request = {"onnx": str(tmp_path / "missing.onnx"), "output_dir": str(tmp_path / "out"), "input_shapes": {}}
    failed = run_worker("onnx2tf", request, tmp_path / "missing", timeout_s=120)
    assert not failed.ok and "\n" not in failed.reason and "missing.onnx" in failed.reason
    assert failed.log is not None and failed.log.is_file()
    slow = run_worker("onnx2tf", request, tmp_path / "slow", timeout_s=0.2)
    assert not slow.ok and slow.reason == "timed out after 0.2 s"


def test_loopback_detection():
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "::ffff:127.0.0.1", None, b"127.0.0.1"):
        assert worker.is_loopback_host(host), host
    for host in ("8.8.8.8", "github.com", "10.0.0.1", "::ffff:8.8.8.8", "", 42):
        assert not worker.is_loopback_host(host), host


def test_offline_sample_images_replace_the_download(tmp_path):
    synthetic = worker._offline_sample_images(None)()
    assert synthetic.shape == worker.ONNX2TF_SAMPLE_SHAPE and synthetic.dtype == np.float32
    assert 0.0 <= synthetic.min() and synthetic.max() < 1.0
    calib = np.random.default_rng(0).random((30, 16, 16, 3), dtype=np.float32)
    np.save(tmp_path / "calib.npy", calib)
    from_calib = worker._offline_sample_images(str(tmp_path / "calib.npy"))()
    np.testing.assert_array_equal(from_calib, calib[:20])


def test_sanitize_node_names():
    names = ["/a/b:0", "conv@1", "", "ok.1", "layer 1", "_x", "conv_1"]
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name=n) for n in names], "g", [], [])
    model = helper.make_model(graph)
    assert worker.sanitize_node_names(model) == 4
    renamed = [node.name for node in model.graph.node]
    assert renamed[0] == "/a/b:0" and renamed[3] == "ok.1" and renamed[6] == "conv_1"  # onnx2tf fixes these itself
    assert len(set(renamed)) == len(renamed)
    assert all(worker._tf_acceptable(name) for name in renamed)


# --------------------------------------------------------------------------------------------------
# The embedded demo model (real weights, real labels)
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_digits_top1_agrees_with_torch(exporter, profile, named_recipes, digits, digits_int8, tmp_path):
    source, evaluation, reference = digits
    artifact = exporter.export(source, profile, named_recipes["fp32"], source.extra["calib"], tmp_path)
    # the int8 conversion (same ONNX, same first calibration samples) already wrote the float32 file
    assert not (tmp_path / "onnx2tf" / "worker.log").exists()
    assert artifact.inputs[0].shape == (1, 8, 8, 1) and artifact.inputs[0].layout == "NHWC"
    assert "AVERAGE_POOL_2D" not in tflite_operators(artifact.path)
    got = _eval_logits(_predictor(exporter, artifact, source), source, evaluation)
    agreement = float(np.mean(got.argmax(1) == reference.argmax(1)))
    assert agreement >= 0.995, agreement
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-4)
    assert _top1(got, evaluation.labels) >= _top1(reference, evaluation.labels) - 0.01


# --------------------------------------------------------------------------------------------------
# Quantized recipes: onnx2tf's own quantizer, calibrated only on edgepack's data
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    """The demo model (real weights) with its calibration and labelled evaluation splits, and the torch
    model's logits on the evaluation split. Module-scoped: its conversion cache is shared by the tests."""
    from edgepack.models.demo_digits import load_demo_source

    source = load_demo_source()  # its weights ship in the package: failing to load them is a failure here
    evaluation: Dataset = source.extra["eval"]
    reference = _torch_out(source.torch_module, evaluation.inputs[source.inputs[0].name])
    return source, evaluation, reference


@pytest.fixture(scope="module")
def quant_recipes() -> dict[str, Recipe]:
    book = load_recipes()
    return {name: book.get(name) for name in ("int8", "int8-full", "int8-a16w8", "int8-dynamic")}


@pytest.fixture(scope="module")
def digits_int8(exporter, profile, quant_recipes, digits, tmp_path_factory, tf_loaded_before):
    source = digits[0]
    recipe = quant_recipes["int8"]
    return exporter.export(source, profile, recipe, source.extra["calib"], tmp_path_factory.mktemp("int8"))


@pytest.fixture(scope="module")
def digits_full(exporter, profile, quant_recipes, digits, tmp_path_factory, digits_int8):
    source = digits[0]
    recipe = quant_recipes["int8-full"]
    return exporter.export(source, profile, recipe, source.extra["calib"], tmp_path_factory.mktemp("full"))


def _eval_logits(predictor: Predictor, source: ModelSource, evaluation: Dataset) -> np.ndarray:
    name_out = source.outputs[0].name
    return np.concatenate([predictor(batch)[name_out] for batch in evaluation.batches()])


def _top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(1) == labels))


def _tensor_dtypes(path: Path) -> set[str]:
    from ai_edge_litert.interpreter import Interpreter

    return {np.dtype(t["dtype"]).name for t in Interpreter(model_path=str(path)).get_tensor_details()}


@pytest.mark.slow
def test_int8_digits_accuracy_within_one_point_of_torch(exporter, digits, digits_int8):
    source, evaluation, reference = digits
    assert (digits_int8.precision, digits_int8.recipe, digits_int8.converter) == ("int8", "int8", "onnx2tf")
    settings = digits_int8.settings["quantization"]
    assert settings["variant"] == "int8" and settings["onnx2tf_file"] == "model_integer_quant.tflite"
    assert settings["quant_type"] == "per-channel" and settings["io"] == "float"
    assert settings["calibration_samples"] == 128  # the recipe's count, from the demo's 200 calibration samples
    (spec,) = digits_int8.inputs
    assert (spec.dtype, spec.shape, spec.quant) == ("float32", (1, 8, 8, 1), None)  # float I/O
    assert "int8" in _tensor_dtypes(digits_int8.path)
    operators = tflite_operators(digits_int8.path)
    assert "QUANTIZE" in operators and "DEQUANTIZE" in operators
    assert "AVERAGE_POOL_2D" not in operators and "MEAN" in operators  # the global pool XNNPACK runs in int8
    got = _eval_logits(_predictor(exporter, digits_int8, source), source, evaluation)
    accuracy, baseline = _top1(got, evaluation.labels), _top1(reference, evaluation.labels)
    assert accuracy >= baseline - 0.01, (accuracy, baseline)
    assert float(np.mean(got.argmax(1) == reference.argmax(1))) >= 0.98


@pytest.mark.slow
def test_full_int8_uint8_io_records_quant_params_and_predicts_floats(exporter, digits, digits_full):
    source, evaluation, reference = digits
    settings = digits_full.settings["quantization"]
    assert settings["variant"] == "int8-full" and settings["io"] == "uint8"
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(digits_full.path))
    interpreter.allocate_tensors()
    details = interpreter.get_input_details() + interpreter.get_output_details()
    assert [np.dtype(d["dtype"]).name for d in details] == ["uint8", "uint8"]
    for spec, detail in zip((*digits_full.inputs, *digits_full.outputs), details):
        scale, zero_point = detail["quantization"]
        assert spec.dtype == "uint8" and spec.quant is not None
        assert spec.quant.scale == pytest.approx(scale) and spec.quant.scale > 0
        assert spec.quant.zero_point == zero_point and 0 <= zero_point <= 255
    # the input range covers the calibration data (0..1 pixels), and the manifest spec says so
    assert digits_full.inputs[0].to_dict()["quant"]["scale"] == pytest.approx(1 / 255, rel=0.05)
    assert digits_full.inputs[0].preprocess == source.inputs[0].preprocess
    got = _eval_logits(_predictor(exporter, digits_full, source), source, evaluation)
    assert got.dtype == np.float32
    assert float(np.mean(got.argmax(1) == reference.argmax(1))) >= 0.97
    assert _top1(got, evaluation.labels) >= _top1(reference, evaluation.labels) - 0.02


@pytest.mark.slow
def test_int8_dynamic_and_a16w8_come_from_the_same_conversion(exporter, profile, quant_recipes, digits, digits_int8,
                                                              tmp_path):
    source, evaluation, reference = digits
    calib = source.extra["calib"]
    dynamic = exporter.export(source, profile, quant_recipes["int8-dynamic"], calib, tmp_path / "dynamic")
    a16w8 = exporter.export(source, profile, quant_recipes["int8-a16w8"], calib, tmp_path / "a16w8")
    for artifact in (dynamic, a16w8):
        assert not (artifact.path.parent / "onnx2tf" / "worker.log").exists()  # written by the int8 run
        assert artifact.inputs[0].dtype == "float32"
    assert dynamic.settings["quantization"]["variant"] == "int8-dynamic"
    assert "int8" in _tensor_dtypes(dynamic.path) and "QUANTIZE" not in tflite_operators(dynamic.path)
    float32 = digits_int8.path.parent / "onnx2tf" / "out" / "model_float32.tflite"
    assert dynamic.bytes < 0.5 * float32.stat().st_size
    assert a16w8.settings["quantization"]["activations"].startswith("int16")
    assert "int16" in _tensor_dtypes(a16w8.path)
    for artifact in (dynamic, a16w8):
        got = _eval_logits(_predictor(exporter, artifact, source), source, evaluation)
        assert float(np.mean(got.argmax(1) == reference.argmax(1))) >= 0.98, artifact.recipe


@pytest.mark.slow
def test_int8_rgb_model_calibrates_offline(exporter, cnn_source, profile, quant_recipes, tmp_path):
    """A 3-channel image model is the case where onnx2tf reaches for its downloadable sample images;
    the worker (network guard on) must convert it from the given calibration arrays alone."""
    rng = np.random.default_rng(11)
    calib = Dataset({"image": rng.standard_normal((24, 3, 32, 32)).astype(np.float32)})
    int8 = quant_recipes["int8"]
    recipe = int8.model_copy(update={"calibration": int8.calibration.model_copy(update={"samples": 16})})
    artifact = exporter.export(cnn_source, profile, recipe, calib, tmp_path)
    assert artifact.settings["quantization"]["calibration_samples"] == 16
    saved = np.load(tmp_path / "onnx2tf" / "calib_image.npy")
    np.testing.assert_array_equal(saved, np.transpose(calib.inputs["image"][:16], (0, 2, 3, 1)))  # NHWC, as given
    predictor = _predictor(exporter, artifact, cnn_source)
    x = calib.inputs["image"][:8]
    assert _cosine(predictor({"image": x})["logits"], _torch_out(cnn_source.torch_module, x)) > 0.98


@pytest.mark.slow
def test_mixed_precision_keeps_the_named_layers_in_float(exporter, profile, quant_recipes, digits, digits_int8, tmp_path):
    source, evaluation, reference = digits
    int8, calib = quant_recipes["int8"], source.extra["calib"]
    hub = export_onnx(source, tmp_path / "onnx", dynamic=False)
    layers = quantizable_layers(hub)
    excludable = exporter.excludable_layers(source, profile, int8, calib, tmp_path / "layers", layers)
    # Every convolution, the pool and the classifier map onto one LiteRT op each; max pooling stays in the
    # int8 scale of its input whatever the denylist says, so it is not offered.
    assert excludable == [layer for layer in layers if not layer.endswith("MaxPool")] and len(excludable) == 5
    keep = [excludable[2], excludable[4]]  # the last convolution and the classifier
    mixed = exporter.export(source, profile, int8.model_copy(update={"exclude": keep}), calib, tmp_path / "mixed")
    settings = mixed.settings["quantization"]
    assert settings["float_layers"] == keep and len(settings["float_ops"]) == 2
    float_outputs = float_op_outputs(mixed.path)
    assert set(settings["float_ops"]) <= float_outputs
    assert {"QUANTIZE", "DEQUANTIZE"} <= set(tflite_operators(mixed.path))
    conv_dtypes = sorted(dtype for op, dtype in _op_output_dtypes(mixed.path) if op == "CONV_2D")
    assert conv_dtypes == ["float32", "int8", "int8"]  # two of three convolutions stay int8
    plain_int8_float = float_op_outputs(digits_int8.path)
    assert not set(settings["float_ops"]) & plain_int8_float  # the same ops are int8 in the plain artifact
    predictor = _predictor(exporter, mixed, source)
    logits = _eval_logits(predictor, source, evaluation)
    assert _top1(logits, evaluation.labels) >= _top1(reference, evaluation.labels) - 0.01
    with pytest.raises(ExportError, match="cannot keep .*MaxPool in float"):
        exporter.export(source, profile, int8.model_copy(update={"exclude": [layers[2]]}), calib, tmp_path / "pool")


def _op_output_dtypes(path: Path) -> list[tuple[str, str]]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    return [(op["op_name"], np.dtype(details[op["outputs"][0]]["dtype"]).name) for op in interpreter._get_ops_details()]


def test_layer_matching_follows_layout_order_and_op_types():
    from edgepack.exporters.tflite.layers import _TfliteOutput

    rng = np.random.default_rng(0)
    conv = rng.standard_normal((1, 4, 3, 3)).astype(np.float32)
    relu = np.maximum(conv, 0)
    second = rng.standard_normal((1, 4, 3, 3)).astype(np.float32)
    fc = rng.standard_normal((1, 10)).astype(np.float32)
    reference = {"c1": conv, "r1": relu, "c2": second, "fc": fc, "const": np.ones((1, 10), np.float32)}
    outputs = [
        _TfliteOutput(0, "RELU", "standalone_relu", np.transpose(relu, (0, 2, 3, 1))),  # wrong op type for a Conv
        _TfliteOutput(1, "CONV_2D", "fused_conv_relu", np.transpose(relu, (0, 2, 3, 1)) + 1e-6),
        _TfliteOutput(2, "CONV_2D", "conv2", np.transpose(second, (0, 2, 3, 1))),
        _TfliteOutput(3, "FULLY_CONNECTED", "fc", fc.reshape(1, 1, 1, 10)),
        _TfliteOutput(4, "MAX_POOL_2D", "pool", np.transpose(second, (0, 2, 3, 1))),
    ]
    candidates = {"conv1": ["c1", "r1"], "conv2": ["c2"], "gemm": ["fc"], "ghost": ["const"], "pool": ["c2"]}
    op_types = {"conv1": "Conv", "conv2": "Conv", "gemm": "Gemm", "ghost": "Gemm", "pool": "MaxPool"}
    found = match_layers(["conv1", "conv2", "gemm", "ghost", "pool"], op_types, candidates, reference, outputs)
    assert found.tensors == {"conv1": "fused_conv_relu", "conv2": "conv2", "gemm": "fc"}
    assert found.unmapped == ("ghost", "pool")
    # Each op is claimed once: a second layer computing the same values gets nothing.
    twice = match_layers(["conv2", "again"], {"conv2": "Conv", "again": "Conv"}, {"conv2": ["c2"], "again": ["c2"]},
                         reference, outputs)
    assert twice.tensors == {"conv2": "conv2"} and twice.unmapped == ("again",)
    assert LayerMap.from_dict(found.to_dict()) == found


def test_quantized_recipes_need_what_onnx2tf_offers(exporter, cnn_source, profile, quant_recipes, tmp_path):
    int8 = quant_recipes["int8"]

    def variant(calibration: dict | None = None, quantization: dict | None = None, **changes) -> Recipe:
        return int8.model_copy(update={
            **changes,
            "calibration": int8.calibration.model_copy(update=calibration or {}),
            "quantization": int8.quantization.model_copy(update=quantization or {}),
        })

    assert exporter.supports(int8) is None and exporter.supports(quant_recipes["int8-full"]) is None
    assert exporter.supports(quant_recipes["int8-a16w8"]) is None
    refused = {
        "entropy": variant(calibration={"method": "entropy"}),
        "asymmetrically": variant(quantization={"symmetric_activations": True}),
        "int16": variant(quantization={"activations": "int16", "io": "uint8"}),
        "mixed precision": variant(exclude=["features.0"], quantization={"io": "uint8"}),
        "QAT": load_recipes().get("int8-qat"),
    }
    for word, recipe in refused.items():
        reason = exporter.supports(recipe)
        assert reason and word in reason, (word, reason)
        with pytest.raises(UnsupportedError):
            exporter.export(cnn_source, profile, recipe, None, tmp_path)
    with pytest.raises(UnsupportedError, match="static int8 needs calibration data"):
        exporter.export(cnn_source, profile, int8, None, tmp_path)
    ids = ModelSource("factory", "test:ids", "ids", "0" * 64, [TensorSpec("ids", (1, 8), "int64")],
                      [TensorSpec("y", (1, 8))], torch_module=nn.Identity())
    with pytest.raises(UnsupportedError, match="float inputs only"):
        exporter.export(ids, profile, int8, Dataset({"ids": np.zeros((4, 8), np.int64)}), tmp_path)
    assert not list(tmp_path.iterdir())  # refused before anything was converted


def test_onnx2tf_quant_options_follow_the_recipe(quant_recipes):
    calib = Dataset({"x": np.zeros((300, 3), np.float32)})
    int8 = tflite_quant.quantization_for(quant_recipes["int8"], calib)
    assert (int8.variant, int8.quant_type, int8.calibration_samples) == ("int8", "per-channel", 128)
    assert int8.worker_options() == {"integer": True, "dynamic": True, "quant_type": "per-channel", "io_dtype": "int8"}
    full = tflite_quant.quantization_for(quant_recipes["int8-full"], Dataset({"x": np.zeros((50, 3), np.float32)}))
    assert (full.variant, full.io_dtype, full.calibration_samples) == ("int8-full", "uint8", 50)
    assert tflite_quant.quantization_for(quant_recipes["int8-a16w8"], calib).variant == "int16"
    per_tensor = quant_recipes["int8"].model_copy(
        update={"quantization": quant_recipes["int8"].quantization.model_copy(update={"per_channel": False})}
    )
    assert tflite_quant.quantization_for(per_tensor, calib).quant_type == "per-tensor"
    dynamic = tflite_quant.quantization_for(quant_recipes["int8-dynamic"], None)
    assert (dynamic.variant, dynamic.static) == ("int8-dynamic", False)
    assert dynamic.worker_options()["integer"] is False
    assert tflite_quant.quantization_for(Recipe(name="fp16", precision="fp16"), None).worker_options() is None
    with pytest.raises(RuntimeError, match="calibration data"):
        worker._quantize_options({"quantize": int8.worker_options()}, [])
    options = worker._quantize_options({"quantize": full.worker_options()}, [["x", "x.npy", 0.0, 1.0]])
    assert options["input_quant_dtype"] == options["output_quant_dtype"] == "uint8"
    assert options["output_integer_quantized_tflite"] and options["quant_type"] == "per-channel"


def test_float_files_of_a_quantizing_run_are_reused_by_float_recipes(cnn_source, quant_recipes, tmp_path):
    """The cache keys: a float request and an int8 request with the same first samples name the same
    float files; the int8 file depends on every calibration sample and the full-integer one on the I/O dtype."""
    rng = np.random.default_rng(0)
    calib = Dataset({"image": rng.standard_normal((40, 3, 32, 32)).astype(np.float32)})
    more = Dataset({"image": np.concatenate([calib.inputs["image"][:30], calib.inputs["image"][:10] + 1])})
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"same onnx bytes")

    def keys(recipe: Recipe, data: Dataset, name: str) -> dict[str, str]:
        quantization = tflite_quant.quantization_for(recipe, data)
        return _onnx2tf_job(cnn_source, onnx_path, data, quantization, tmp_path / name, pseudo_ops=()).keys

    fp32 = keys(Recipe(name="fp32", precision="fp32"), calib, "fp32")
    int8 = keys(quant_recipes["int8"], calib, "int8")
    int8_more = keys(quant_recipes["int8"], more, "int8_more")
    full = keys(quant_recipes["int8-full"], calib, "full")
    assert len(np.load(tmp_path / "fp32" / "calib_image.npy")) == CALIB_SAMPLES
    assert len(np.load(tmp_path / "int8" / "calib_image.npy")) == 40
    assert fp32["fp32"] == int8["fp32"] == int8_more["fp32"] == full["fp32"] and set(fp32) == {"fp32", "fp16"}
    assert int8["int8"] != int8_more["int8"] and int8["int8"] == full["int8"]
    assert int8["int8-full"] != full["int8-full"]
    assert int8["int8-dynamic"] == full["int8-dynamic"] == int8_more["int8-dynamic"]
    # The worker imports nothing of edgepack's: it names onnx2tf's output files from the request's one table.
    job = _onnx2tf_job(cnn_source, onnx_path, calib, tflite_quant.quantization_for(quant_recipes["int8"], calib),
                       tmp_path / "names", pseudo_ops=())
    assert job.request["onnx2tf_files"] == tflite_quant.ONNX2TF_FILES


def test_quantize_and_dequantize_match_litert_conventions():
    quant = QuantParams(0.5, 3)
    values = np.array([-100.0, -1.25, -0.25, 0.0, 0.25, 0.75, 1.0, 200.0], np.float32)
    # half away from zero (-0.5 -> -1, 0.5 -> 1, 1.5 -> 2), then the zero point, then saturation
    np.testing.assert_array_equal(quantize(values, quant, "int8"), np.array([-128, 0, 2, 3, 4, 5, 5, 127], np.int8))
    np.testing.assert_array_equal(quantize(values, quant, "uint8"), np.array([0, 0, 2, 3, 4, 5, 5, 255], np.uint8))
    q = np.array([0, 3, 255], np.uint8)
    real = dequantize(q, quant)
    assert real.dtype == np.float32
    np.testing.assert_array_equal(real, np.array([-1.5, 0.0, 126.0], np.float32))


@pytest.mark.slow
def test_interpreter_creation_keeps_stderr_clean(digits_full):
    """LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on fd 2 when the delegate is
    applied; the predictor swallows it (the CLI's one-line error contract) and leaves stderr working."""
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        from edgepack.exporters.tflite.model_io import TflitePredictor
        settings = json.loads({json.dumps(digits_full.settings)!r})
        predictor = TflitePredictor({str(digits_full.path)!r}, settings)
        out = predictor({{"image": np.zeros((2, 1, 8, 8), np.float32)}})["logits"]
        sys.stderr.write("after\\n")
        print(out.shape)
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "(2, 10)"
    assert completed.stderr == "after\n"


def test_global_average_pool_rewrite():
    def pool(name: str, kernel: list[int], **attrs) -> onnx.NodeProto:
        return helper.make_node("AveragePool", ["x"], [name], name=name, kernel_shape=kernel, **attrs)

    nodes = [pool("whole", [4, 4]), pool("partial", [2, 2]), pool("padded", [4, 4], pads=[1, 1, 1, 1]),
             pool("strided", [4, 4], strides=[2, 2])]
    graph = helper.make_graph(
        nodes, "pools", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
        [helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, [1, 8, side, side])
         for n, side in zip(nodes, (1, 3, 3, 1))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert worker.globalize_average_pools(model) == 2
    assert [n.op_type for n in model.graph.node] == ["GlobalAveragePool", "AveragePool", "AveragePool",
                                                     "GlobalAveragePool"]
    assert not model.graph.node[0].attribute
    onnx.checker.check_model(model)


def test_hard_sigmoid_decomposition_keeps_the_values():
    import onnxruntime as ort

    nodes = [
        helper.make_node("HardSigmoid", ["x"], ["gate"], name="se/gate", alpha=1 / 6, beta=0.5),
        helper.make_node("HardSigmoid", ["x"], ["plain"], name=""),  # ONNX defaults alpha 0.2, beta 0.5
        helper.make_node("Mul", ["x", "gate"], ["y"], name="se/mul"),
    ]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, 8]) for n in ("y", "plain")]
    graph = helper.make_graph(nodes, "hs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.linspace(-8, 8, 32, dtype=np.float32).reshape(1, 4, 8)

    def run(m: onnx.ModelProto) -> list[np.ndarray]:
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})

    before = run(model)
    assert worker.decompose_hard_sigmoids(model) == 2
    onnx.checker.check_model(model)
    assert "HardSigmoid" not in {n.op_type for n in model.graph.node}
    assert all(worker._tf_acceptable(n.name) for n in model.graph.node)
    for want, got in zip(before, run(model)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
