"""TorchScript archives as sources: recognised before anything reads them, loaded with ``torch.jit.load``
only, non-tensor ``forward`` arguments frozen with ``--input NAME:TYPE=VALUE``, stateful modules restored
after each call; Silero VAD's ``silero_vad.jit`` (the corpus) to ONNX Runtime and OpenVINO with parity.
"""

from __future__ import annotations

import torch  # noqa: I001 - torch before anything that could pull TensorFlow
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import corpus
from edgepack import api
from edgepack.errors import InputError, SourceError
from edgepack.exporters.onnx.hub import export_onnx
from edgepack.models.input_spec import parse_input_spec
from edgepack.models.loaders import load_source
from edgepack.models.source import ConstantInput

CLI = [sys.executable, "-m", "edgepack.cli"]
pytestmark = [
    pytest.mark.filterwarnings(f"ignore:`torch.jit.{name}` is deprecated:FutureWarning") for name in ("load", "save", "script")
]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600)


def _one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    from cli_lines import message_lines

    lines = message_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("edgepack: error: ") and "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------------------------------
# --input NAME:TYPE=VALUE
# --------------------------------------------------------------------------------------------------


def test_constant_inputs_parse():
    assert parse_input_spec("sr:int=16000") == ConstantInput("sr", "int", 16000)
    assert parse_input_spec("gain:float=0.5") == ConstantInput("gain", "float", 0.5)
    assert parse_input_spec("causal:bool=true") == ConstantInput("causal", "bool", True)
    assert parse_input_spec("causal:bool=0").value is False
    assert parse_input_spec("sr:int=16000").text() == "sr:int=16000"
    assert parse_input_spec("x:1x512").shape == (1, 512)  # tensors as before


@pytest.mark.parametrize(("text", "needle"), [
    ("sr:int=16k", "'16k' is not an int"),
    ("sr:str=16000", "unknown constant type 'str'"),
    ("sr=16000", "expected NAME:TYPE=VALUE"),
    ("gain:float=inf", "must be finite"),
    ("flag:bool=yes", "'yes' is not a bool"),
])
def test_bad_constant_inputs_are_one_error(text, needle):
    with pytest.raises(InputError, match=needle):
        parse_input_spec(text)


# --------------------------------------------------------------------------------------------------
# Small archives made here
# --------------------------------------------------------------------------------------------------


class _Branchy(torch.nn.Module):
    """Control flow on an int argument, a float argument with a default, a bool flag."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, mode: int, bias: float = 0.5, negate: bool = False) -> torch.Tensor:
        y = self.linear(x)
        if mode == 2:
            y = torch.relu(y) * 2.0
        else:
            y = torch.sigmoid(y)
        y = y + bias
        if negate:
            y = -y
        return y


class _Stateful(torch.nn.Module):
    """Keeps a running sum across calls (like a streaming model's recurrent state)."""

    def __init__(self) -> None:
        super().__init__()
        self.acc = torch.ones(1, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calls == 0:
            self.acc = self.acc * 2.0
        self.acc = self.acc + x
        self.calls += 1
        return self.acc * 1.0


def _save(module: torch.nn.Module, path: Path) -> Path:
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path


@pytest.fixture()
def branchy(tmp_path) -> Path:
    torch.manual_seed(0)
    return _save(_Branchy(), tmp_path / "branchy.pt")


def _onnx_run(source, tmp_path: Path, x: np.ndarray) -> np.ndarray:
    path = export_onnx(source, tmp_path / "onnx", dynamic=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [s.name for s in source.inputs]  # tensors only
    return session.run(None, {source.inputs[0].name: x})[0]


@pytest.mark.parametrize(("constants", "call"), [
    (["mode:int=2"], (2,)),
    (["mode:int=1", "bias:float=-1.5", "negate:bool=true"], (1, -1.5, True)),
])
def test_constants_are_frozen_into_the_graph(branchy, tmp_path, constants, call):
    """Each constant picks its branch in the exported ONNX graph; unset arguments keep their defaults."""
    source = load_source(str(branchy), inputs=[parse_input_spec(t) for t in ["x:1x4", *constants]])
    assert source.kind == "torchscript" and [s.name for s in source.inputs] == ["x"]
    assert [c.text() for c in source.constants] == constants
    assert source.describe()["constants"][0]["name"] == "mode"
    reference = torch.jit.load(str(branchy))
    x = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)
    expected = reference(torch.from_numpy(x), *call).detach().numpy()
    np.testing.assert_allclose(source.torch_module(torch.from_numpy(x)).detach().numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(_onnx_run(source, tmp_path, x), expected, rtol=1e-5, atol=1e-6)


def test_the_one_tensor_argument_may_be_renamed(branchy):
    """With one tensor argument, ``--input`` names the artifact's input (as for other single-input sources)."""
    source = load_source(str(branchy), inputs=[parse_input_spec("features:1x4"), parse_input_spec("mode:int=2")])
    assert [s.name for s in source.inputs] == ["features"] and source.constants[0].value == 2


def test_a_stateful_module_starts_every_call_from_its_saved_state(tmp_path):
    path = _save(_Stateful(), tmp_path / "stateful.jit")
    source = load_source(str(path), inputs=[parse_input_spec("x:1x4")])
    assert sorted(source.extra["torchscript_state"]) == ["acc", "calls"]
    x = np.full((1, 4), 0.25, np.float32)
    first = source.torch_module(torch.from_numpy(x)).numpy()
    second = source.torch_module(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(first, second)
    fresh = torch.jit.load(str(path))
    np.testing.assert_array_equal(first, fresh(torch.from_numpy(x)).numpy())  # 1 * 2 + 0.25
    np.testing.assert_allclose(_onnx_run(source, tmp_path, x), first, rtol=1e-6)


@pytest.mark.parametrize(("inputs", "needle"), [
    ([], "forward argument(s) need --input: x:DIMS, mode:int=VALUE"),
    (["x:1x4"], "need --input: mode:int=VALUE"),
    (["x:1x4", "mode:float=2.0"], "forward argument 'mode' of"),
    (["x:int=3", "mode:int=2"], "forward argument 'x' of"),
    (["x:1x4", "mode:1x1"], "is int, not a Tensor"),
    (["x:1x4", "mode:int=2", "rate:int=3"], "--input names ['rate'] are not forward arguments"),
])
def test_argument_mismatches_are_one_error(branchy, inputs, needle):
    with pytest.raises(InputError) as error:
        load_source(str(branchy), inputs=[parse_input_spec(t) for t in inputs])
    assert needle in error.value.message


def test_constants_are_refused_for_other_sources(tiny_cnn_file):
    with pytest.raises(InputError, match="constant arguments apply to TorchScript sources"):
        load_source(f"{tiny_cnn_file}:build", inputs=[parse_input_spec("sr:int=16000")])


def test_a_pickled_pt_is_refused_without_unpickling(tmp_path):
    """A state dict and a whole pickled module: one error line each, nothing is unpickled (a pickle that
    would run code on load is refused just the same)."""
    state_dict = tmp_path / "weights.pt"
    torch.save({"linear.weight": torch.zeros(3, 4)}, state_dict)
    proc = _cli("export", str(state_dict), "-t", "host-ort", "--input", "x:1x4", "--out", str(tmp_path / "o"))
    _one_error_line(proc, "weights.pt", "pickled PyTorch file", "never unpickles")
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    hostile = tmp_path / "model.pth"
    torch.save(Payload(), hostile)
    with pytest.raises(SourceError, match="pickled PyTorch file"):
        load_source(str(hostile), inputs=[parse_input_spec("x:1x4")])
    assert not marker.exists()
    junk = tmp_path / "model.jit"
    junk.write_bytes(b"not a model")
    with pytest.raises(SourceError, match="not a TorchScript archive"):
        load_source(str(junk), inputs=[parse_input_spec("x:1x4")])


# --------------------------------------------------------------------------------------------------
# Silero VAD's TorchScript archive (the corpus)
# --------------------------------------------------------------------------------------------------


def _speech_like(samples: int, count: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    t = np.arange(samples) / 16000
    chunks = [0.3 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t) + 0.02 * rng.standard_normal(samples)
              for _ in range(count)]
    return np.stack(chunks).astype(np.float32)[:, None, :]


@pytest.mark.slow
def test_silero_vad_jit_exports_with_parity(tmp_path):
    """The goal command: host targets ship with parity; onnx2tf's LSTM failure is reported precisely."""
    path = corpus.model_path("silero-vad-jit")
    out = tmp_path / "out"
    proc = _cli("export", str(path), "--input", "x:1x512", "--input", "sr:int=16000",
                "-t", "host-ort", "-t", "x86-openvino", "-t", "android-pixel8", "--out", str(out))
    assert proc.returncode == 1, proc.stderr  # a partial bundle: one target failed
    assert "Traceback" not in proc.stderr
    bundle = next(out.glob("*/manifest.json")).parent
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["source"]["kind"] == "torchscript"
    assert manifest["source"]["constants"] == [{"name": "sr", "dtype": "int", "value": 16000}]
    assert [i["name"] for i in manifest["source"]["inputs"]] == ["x"]
    for target in ("host-ort", "x86-openvino"):
        entry = manifest["targets"][target]
        assert entry["status"] == "ok", entry
        assert entry["parity"]["passed"] and entry["parity"]["min_cosine"] > 0.9999, entry["parity"]
    tflite = manifest["targets"]["android-pixel8"]
    assert tflite["status"] == "failed"
    assert "onnx2tf: ValueError: An `initial_state` was passed" in tflite["error"]
    assert "[ONNX LSTM node " in tflite["error"] and "Traceback" not in tflite["error"]
    # the shipped ONNX Runtime file against the archive itself, fresh state, on speech-like chunks
    session = ort.InferenceSession(str(bundle / manifest["targets"]["host-ort"]["artifact"]["path"]))
    for chunk in _speech_like(512, 4):
        expected = torch.jit.load(str(path))(torch.from_numpy(chunk), 16000).detach().numpy()
        np.testing.assert_allclose(session.run(None, {"x": chunk})[0], expected, rtol=1e-4, atol=1e-6)


def _silero_on_host_ort(path, inputs: list[str], tmp_path):
    """Silero's archive exported fp32 to host-ort with ``inputs``: its manifest entry (shipped, parity passed)
    and an ONNX Runtime session on the shipped file."""
    result = api.export(str(path), ["host-ort"], inputs=inputs, out=tmp_path / "out", cache=False,
                        recipe_chain=["fp32"])
    entry = result.manifest["targets"]["host-ort"]
    assert entry["status"] == "ok" and entry["parity"]["passed"], entry
    return entry, ort.InferenceSession(str(result.bundle / entry["artifact"]["path"]))


@pytest.mark.slow
def test_silero_vad_jit_8khz_branch(tmp_path):
    """``sr:int=8000`` with 256-sample chunks exports the archive's 8 kHz model, not the 16 kHz one."""
    path = corpus.model_path("silero-vad-jit")
    _, session = _silero_on_host_ort(path, ["x:1x256", "sr:int=8000"], tmp_path)
    chunk = _speech_like(256, 1)[0]
    expected = torch.jit.load(str(path))(torch.from_numpy(chunk), 8000).detach().numpy()
    np.testing.assert_allclose(session.run(None, {"x": chunk})[0], expected, rtol=1e-4, atol=1e-6)
    # 512 samples do not fit 8 kHz: the archive's own exception, not TorchScript's preamble
    with pytest.raises(InputError, match=r"the model rejects input.*ValueError: Provided number of samples is 512"):
        load_source(str(path), inputs=[parse_input_spec("x:1x512"), parse_input_spec("sr:int=8000")])


@pytest.mark.slow
def test_silero_vad_jit_keeps_a_symbolic_batch(tmp_path):
    """``x:batchx512`` on a dynamic-shape profile: one artifact runs every batch size like the archive."""
    path = corpus.model_path("silero-vad-jit")
    entry, session = _silero_on_host_ort(path, ["x:batchx512", "sr:int=16000"], tmp_path)
    assert entry["artifact"]["inputs"] == [{"name": "x", "shape": ["batch", 512], "dtype": "float32"}]
    chunks = _speech_like(512, 3)[:, 0]
    expected = torch.jit.load(str(path))(torch.from_numpy(chunks), 16000).detach().numpy()
    np.testing.assert_allclose(session.run(None, {"x": chunks})[0], expected, rtol=1e-4, atol=1e-6)
