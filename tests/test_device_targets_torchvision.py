"""torchvision mobilenet_v2 and resnet18 (random init, 96x96 inputs) to the device-only targets whose other
tests use small models: Edge TPU and an Android TFLite target. Jetson and iPhone have their own torchvision
tests (tests/test_tensorrt_exporter.py, tests/test_coreml_exporter.py)."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack import api
from edgepack.models.input_spec import parse_input_spec
from edgepack.models.loaders import load_source
from edgepack.models.sample import recalibrate_batchnorm
from edgepack.models.synthetic import domain_dataset_arrays


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mobilenet_v2", "resnet18"])
def test_torchvision_models_to_edge_tpu_and_android(tmp_path, model, one_torch_thread):
    from ai_edge_litert.interpreter import Interpreter

    source = recalibrate_batchnorm(load_source(f"torchvision:{model}", inputs=[parse_input_spec("input:1x3x96x96")], random_weights=True))
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=domain_dataset_arrays(source.inputs, 16, seed=0)["input"])
    # Random-init 1000-class logits are too close for top-1 agreement to mean anything after full-int8
    # (the fidelity gate rejects resnet18 at ~0.5): this test is about conversion, parity and placement.
    result = api.export(source, ["coral-edgetpu", "android-pixel8"], calib=calib, out=tmp_path / "out", max_drop=1.0)
    for target in ("coral-edgetpu", "android-pixel8"):
        entry = result.manifest["targets"][target]
        assert entry["status"] == "ok", (target, entry["error"])
        interpreter = Interpreter(model_path=str(result.bundle / entry["artifact"]["path"]))
        interpreter.allocate_tensors()  # the int8 .tflite loads with LiteRT's own reader
        placement = entry["placement"]
        assert placement["total_ops"] > 20 and placement["vocabulary"] == "tflite"
        assert 0.0 <= placement["cpu_fallback_fraction"] <= 1.0
    coral = result.manifest["targets"]["coral-edgetpu"]
    assert coral["recipe"] == "int8-full" and coral["artifact"]["inputs"][0]["dtype"] == "uint8"
    script = (result.bundle / "artifacts/coral-edgetpu/compile_edgetpu.sh").read_text()
    assert "edgetpu_compiler" in script and "model.tflite" in script
    tpu = coral["placement"]["accelerators"][0]
    assert tpu["accelerator"] == "tpu" and tpu["supported"] >= 20, tpu["fallback"][:3]
    android = result.manifest["targets"]["android-pixel8"]
    assert {a["accelerator"] for a in android["placement"]["accelerators"]} == {"gpu", "nnapi"}
