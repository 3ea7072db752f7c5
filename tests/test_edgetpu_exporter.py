"""Coral Edge TPU: full-integer TFLite with uint8 I/O, compile script, parameter-cache estimate, placement."""

from __future__ import annotations

import numpy as np
import pytest

from edgepack import api
from edgepack.errors import InputError
from edgepack.exporters.edgetpu.exporter import constant_bytes, parse_compiler_log


@pytest.fixture(scope="module")
def coral(tmp_path_factory):
    return api.export("demo:digits", ["coral-edgetpu"], out=tmp_path_factory.mktemp("coral"))


def test_full_integer_model_with_uint8_io(coral):
    from ai_edge_litert.interpreter import Interpreter

    entry = coral.manifest["targets"]["coral-edgetpu"]
    assert entry["status"] == "ok" and entry["recipe"] == "int8-full", entry["error"]
    assert entry["runnable_here"].startswith("checked on LiteRT CPU")
    assert entry["gate"]["drop"] <= 0.01
    spec = entry["artifact"]["inputs"][0]
    assert spec["dtype"] == "uint8" and spec["quant"]["scale"] > 0 and spec["shape"] == [1, 8, 8, 1]
    interpreter = Interpreter(model_path=str(coral.bundle / entry["artifact"]["path"]))
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8
    assert interpreter.get_output_details()[0]["dtype"] == np.uint8


def test_compile_script_and_parameter_cache(coral):
    entry = coral.manifest["targets"]["coral-edgetpu"]
    settings = entry["artifact"]["settings"]
    script = (coral.bundle / "artifacts/coral-edgetpu/compile_edgetpu.sh").read_text()
    assert settings["compile_command"] in script and "edgetpu_compiler" in script
    model = coral.bundle / entry["artifact"]["path"]
    assert settings["parameter_bytes"] == constant_bytes(model) and 20_000 < settings["parameter_bytes"] < 40_000
    assert settings["parameters_fit_on_chip"] is True


def test_every_digits_op_maps_to_the_tpu(coral):
    placement = coral.manifest["targets"]["coral-edgetpu"]["placement"]
    tpu = next(a for a in placement["accelerators"] if a["accelerator"] == "tpu")
    assert tpu["fallback"] == [] and tpu["supported"] == placement["total_ops"]


def test_float_recipes_are_refused_for_the_tpu(tmp_path):
    # alone, a chain no attempt of which the TPU runs is refused before any work, and nothing is written
    with pytest.raises(InputError, match="full-integer"):
        api.export("demo:digits", ["coral-edgetpu"], out=tmp_path / "alone", recipe_chain=["int8", "fp32"])
    assert not (tmp_path / "alone").exists()
    # beside a target that runs it, the TPU's entry records each recipe as skipped, with the reason
    result = api.export("demo:digits", ["coral-edgetpu", "host-ort"], out=tmp_path / "both", recipe_chain=["fp32"])
    entry = result.manifest["targets"]["coral-edgetpu"]
    assert entry["status"] == "failed" and result.manifest["targets"]["host-ort"]["status"] == "ok"
    assert entry["attempts"] and all(a["status"] == "skipped" and "full-integer" in a["reason"]
                                     for a in entry["attempts"])


def test_compiler_log_parsing():
    log = ("Edge TPU Compiler version 16.0.384591198\nModel compiled successfully in 120 ms.\n"
           "Number of operations that will run on Edge TPU: 61\nNumber of operations that will run on CPU: 3\n")
    assert parse_compiler_log(log) == {"tpu_ops": 61, "cpu_ops": 3}
