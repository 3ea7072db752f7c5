"""TensorRT (Jetson) artifacts: explicit-quantization QDQ ONNX, calibration cache, trtexec build script.

TensorRT itself needs an NVIDIA GPU; here the ONNX is checked with the onnx checker and its numerics with
ONNX Runtime as a labelled proxy (never a latency)."""

from __future__ import annotations

import struct

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgepack import api
from edgepack.models.loaders import load_source
from edgepack.models.input_spec import parse_input_spec
from edgepack.models.synthetic import domain_dataset_arrays


@pytest.fixture(scope="module")
def jetson_bundle(tmp_path_factory):
    return api.export("demo:digits", ["jetson-orin", "jetson-orin-nano"], out=tmp_path_factory.mktemp("trt"))


def test_int8_qdq_is_symmetric_per_channel(jetson_bundle):
    entry = jetson_bundle.manifest["targets"]["jetson-orin"]
    assert entry["status"] == "ok" and entry["recipe"] == "int8", entry["attempts"]
    assert entry["runnable_here"].startswith("checked on ONNX Runtime CPU (proxy")
    assert entry["gate"]["drop"] <= 0.01 and entry["gate"]["latency_ratio"] is None
    model = onnx.load(str(jetson_bundle.bundle / entry["artifact"]["path"]))
    onnx.checker.check_model(model, full_check=True)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    quant_nodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert quant_nodes
    for node in quant_nodes:
        zero_point = inits.get(node.input[2]) if len(node.input) > 2 else None
        assert zero_point is not None and zero_point.dtype == np.int8 and not zero_point.any(), node.name
    per_channel = [n for n in quant_nodes if any(a.name == "axis" for a in n.attribute) and inits[n.input[1]].size > 1]
    assert per_channel, "weights must carry per-channel scales"


def test_build_script_and_flags(jetson_bundle):
    orin = jetson_bundle.manifest["targets"]["jetson-orin"]["artifact"]
    nano = jetson_bundle.manifest["targets"]["jetson-orin-nano"]["artifact"]
    for artifact in (orin, nano):
        assert artifact["settings"]["engine"] == "built on device (not portable)"
        script = (jetson_bundle.bundle / "artifacts" / artifact["path"].split("/")[1] / "build_engine.sh").read_text()
        assert script.startswith("#!/bin/sh") and artifact["settings"]["trtexec"] in script
        assert "--int8" in script and "--fp16" in script and "--saveEngine=model.engine" in script
    # GPU-only Orin Nano keeps the dynamic batch through an optimization profile...
    assert "--minShapes=image:1x1x8x8" in nano["settings"]["trtexec"] and "--maxShapes=image:8x1x8x8" in nano["settings"]["trtexec"]
    assert nano["inputs"][0]["shape"][0] == "batch"
    assert "--useDLACore" not in nano["settings"]["trtexec"], "Orin Nano has no DLA"
    # ...while a DLA build needs min = opt = max: Orin ships a static graph and no shape flags.
    assert "--useDLACore=0 --allowGPUFallback" in orin["settings"]["trtexec"]
    assert "Shapes=" not in orin["settings"]["trtexec"] and orin["inputs"][0]["shape"] == [1, 1, 8, 8]
    assert orin["settings"]["dynamic_shapes"] is False
    assert orin["settings"]["tensorrt"] == ">=10.3,<11"


def test_calibration_cache_format(jetson_bundle):
    cache = (jetson_bundle.bundle / "artifacts/jetson-orin/calibration.cache").read_text().splitlines()
    assert cache[0].startswith("TRT-") and cache[0].endswith("EntropyCalibration2")
    entries = dict(line.split(": ") for line in cache[1:])
    assert "image" in entries
    scales = [struct.unpack(">f", bytes.fromhex(value))[0] for value in entries.values()]
    assert all(np.isfinite(s) and s > 0 for s in scales)
    # the input is 0..1 pixels: amax 1.0 -> scale 1/127
    assert struct.unpack(">f", bytes.fromhex(entries["image"]))[0] == pytest.approx(1 / 127, rel=1e-3)


def _activation_scales(model: onnx.ModelProto) -> dict[str, float]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits and inits[n.input[1]].size == 1}


def test_the_recipes_calibration_method_sets_the_qdq_scales_and_the_cache(tmp_path, jetson_bundle):
    """int8-mse ranges (and the calibration cache) come from the MSE search, not min-max (TensorRT used min-max
    whatever the recipe said)."""
    result = api.export("demo:digits", ["jetson-orin-nano"], out=tmp_path, recipe_chain=["int8-mse"])
    entry = result.manifest["targets"]["jetson-orin-nano"]
    assert entry["status"] == "ok" and entry["artifact"]["settings"]["calibration"] == "mse", entry.get("attempts")
    assert jetson_bundle.manifest["targets"]["jetson-orin-nano"]["artifact"]["settings"]["calibration"] == "minmax"
    mse = _activation_scales(onnx.load(str(result.bundle / entry["artifact"]["path"])))
    minmax_entry = jetson_bundle.manifest["targets"]["jetson-orin-nano"]["artifact"]
    minmax = _activation_scales(onnx.load(str(jetson_bundle.bundle / minmax_entry["path"])))
    shared = sorted(set(mse) & set(minmax))
    assert shared and any(mse[t] < minmax[t] * 0.99 for t in shared), (mse, minmax)  # MSE clips outliers
    assert all(mse[t] <= minmax[t] * 1.0001 for t in shared)
    caches = [(bundle / "artifacts/jetson-orin-nano/calibration.cache").read_text()
              for bundle in (result.bundle, jetson_bundle.bundle)]
    assert caches[0] != caches[1]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mobilenet_v2", "resnet18"])
def test_torchvision_models_export_for_jetson(tmp_path, model):

    source = load_source(f"torchvision:{model}", inputs=[parse_input_spec("input:batchx3x96x96")], random_weights=True)
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=domain_dataset_arrays(source.inputs, 16, seed=0)["input"])
    result = api.export(source, ["jetson-orin"], calib=calib, out=tmp_path / "out", recipe_chain=["int8", "fp16"])
    entry = result.manifest["targets"]["jetson-orin"]
    assert entry["status"] == "ok", entry["error"]
    onnx.checker.check_model(onnx.load(str(result.bundle / entry["artifact"]["path"])))
    assert entry["placement"]["accelerators"][0]["accelerator"] == "gpu"


TRTEXEC_LOG = """\
[10/03/2024-10:47:59] [I] === Device Information ===
[10/03/2024-10:47:59] [I] Selected Device: Orin
[10/03/2024-10:47:59] [I] TensorRT version: 10.3.0
[10/03/2024-10:47:59] [I] === Performance summary ===
[10/03/2024-10:47:59] [I] Throughput: 130.298 qps
[10/03/2024-10:47:59] [I] Latency: min = 5.38672 ms, max = 13.3664 ms, mean = 7.60628 ms, median = 7.16092 ms, percentile(90%) = 10.2996 ms, percentile(95%) = 10.8698 ms, percentile(99%) = 12.9675 ms
[10/03/2024-10:47:59] [I] GPU Compute Time: min = 5.34595 ms, max = 13.3388 ms, mean = 7.58404 ms, median = 7.14139 ms, percentile(90%) = 10.2881 ms, percentile(95%) = 10.8175 ms, percentile(99%) = 12.9485 ms
"""


def test_trtexec_performance_summary_is_parsed():
    from edgepack.exporters.tensorrt.engine import parse_trtexec_log

    summary = parse_trtexec_log(TRTEXEC_LOG)
    assert summary["throughput_qps"] == 130.298 and summary["device"] == "Orin" and summary["tensorrt"] == "10.3.0"
    assert summary["latency_ms"] == {"min": 5.38672, "max": 13.3664, "mean": 7.60628, "median": 7.16092,
                                     "p90": 10.2996, "p95": 10.8698, "p99": 12.9675}
    assert summary["gpu_compute_time_ms"]["median"] == 7.14139


def test_engine_is_built_and_timed_only_where_trtexec_and_a_gpu_exist(tmp_path, jetson_bundle):
    from edgepack.exporters.tensorrt.engine import build_and_time, find_trtexec, gpu_present

    recorded = jetson_bundle.manifest["targets"]["jetson-orin"]["artifact"]["settings"]["engine_build"]
    if find_trtexec() is None or not gpu_present():
        assert recorded["built_here"] is False and recorded["reason"].startswith("not measurable here")
    # The build path itself, with a stand-in trtexec that prints trtexec's log format and records its argv.
    fake = tmp_path / "trtexec"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > argv.txt\ntouch model.engine\ncat <<'LOG'\n{TRTEXEC_LOG}LOG\n")
    fake.chmod(0o755)
    command = ["trtexec", "--onnx=model.onnx", "--int8", "--useDLACore=0", "--allowGPUFallback", "--saveEngine=model.engine"]
    off_target = build_and_time(tmp_path, command, trtexec=str(fake), gpu=True, jetson=False)
    assert off_target["built_here"] and not off_target["on_target"] and "indicative" in off_target["note"]
    assert "--useDLACore" not in (tmp_path / "argv.txt").read_text() and not (tmp_path / "model.engine").exists()
    assert off_target["latency_ms"]["median"] == 7.16092
    on_target = build_and_time(tmp_path, command, trtexec=str(fake), gpu=True, jetson=True)
    assert on_target["on_target"] and "--useDLACore=0 --allowGPUFallback" in (tmp_path / "argv.txt").read_text()
    assert build_and_time(tmp_path, command, trtexec=str(fake), gpu=False)["reason"] == "not measurable here: no NVIDIA GPU on this host"
    fake.write_text("#!/bin/sh\necho 'Error: cuda initialization failure' >&2\nexit 1\n")
    failed = build_and_time(tmp_path, command, trtexec=str(fake), gpu=True, jetson=False)
    assert failed["built_here"] is False and "cuda initialization failure" in failed["reason"]


def test_recipes_tensorrt_cannot_honour_are_refused_with_the_reason():
    from edgepack.compress.recipe import load_recipes
    from edgepack.exporters.registry import get_exporter

    book, exporter = load_recipes(), get_exporter("tensorrt")
    assert "int16 activations" in exporter.refusal(book.get("int8-a16w8"))  # was exported as int8, silently
    assert "integer I/O" in exporter.refusal(book.get("int8-full"))
    for name in ("int8", "int8-mse", "int8-entropy", "fp16", "fp32"):
        assert exporter.refusal(book.get(name)) is None, name
