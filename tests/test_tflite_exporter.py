"""TFLite exporter: real onnx2tf conversions in the worker subprocess, run with the real LiteRT interpreter.

Outputs are compared numerically with the torch source. torch is imported first on purpose (importing
TensorFlow before torch crashes; this process must never import TensorFlow at all).
"""

from __future__ import annotations

import hashlib
import importlib.util
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
from edgepack.exporters import _tflite_worker as worker
from edgepack.exporters.base import NotRunnable, Predictor
from edgepack.exporters.tflite import (
    LITERT_TORCH_MISSING,
    TfliteExporter,
    flex_ops,
    run_worker,
    summarize_failure,
)
from edgepack.models.source import ModelSource, Preprocess, TensorSpec
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
    int8 = Recipe(name="int8", precision="int8")
    reason = exporter.supports(int8)
    assert reason and "int8" in reason
    assert exporter.supports(Recipe(name="fp16", precision="fp16")) is None
    with pytest.raises(UnsupportedError, match="int8"):
        exporter.export(cnn_source, profile, int8, None, tmp_path)


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
    from edgepack.exporters._tflite_worker import NetworkBlockedError, install_network_guard
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
    import edgepack.exporters.tflite, ai_edge_litert.interpreter  # the parent imports these, never TF
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
def test_demo_digits_top1_agrees_with_torch(exporter, profile, named_recipes, tmp_path):
    try:
        from edgepack.models.demo_digits import load_demo_source

        source = load_demo_source()
    except (ImportError, FileNotFoundError, OSError) as exc:
        pytest.skip(f"demo digits model not available yet: {type(exc).__name__}: {exc}")
    artifact = exporter.export(source, profile, named_recipes["fp32"], source.extra["calib"], tmp_path)
    assert artifact.inputs[0].shape == (1, 8, 8, 1) and artifact.inputs[0].layout == "NHWC"
    predictor = _predictor(exporter, artifact, source)
    evaluation: Dataset = source.extra["eval"]
    name_in, name_out = source.inputs[0].name, source.outputs[0].name
    got = np.concatenate([predictor(batch)[name_out] for batch in evaluation.batches()])
    ref = _torch_out(source.torch_module, evaluation.inputs[name_in])
    agreement = float(np.mean(got.argmax(1) == ref.argmax(1)))
    assert agreement >= 0.995, agreement
    accuracy = float(np.mean(got.argmax(1) == evaluation.labels))
    assert accuracy >= float(np.mean(ref.argmax(1) == evaluation.labels)) - 0.01
