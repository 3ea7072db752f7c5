"""The first divergent layer: an artifact broken on purpose is traced back to the broken layer."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import numpy_helper

from edgepack import api
from edgepack.compress.recipe import ParityTolerance
from edgepack.divergence import find_divergence
from edgepack.exporters.onnx.hub import export_onnx
from edgepack.exporters.openvino.exporter import OpenVinoExporter
from edgepack.exporters.ort.exporter import OrtExporter
from edgepack.models.loaders import load_source
from edgepack.models.sample import example_inputs

BROKEN = "/features/features.3/Conv"
"""The second convolution of the demo digits CNN (hub ONNX node name)."""


def _break_conv_weight(path, node_name: str) -> None:
    """Negate and double the weight of ``node_name`` in an exported ONNX file (a wrong constant)."""
    model = onnx.load(str(path))
    node = next(n for n in model.graph.node if n.name == node_name)
    for init in model.graph.initializer:
        if init.name == node.input[1]:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * -2.0, init.name))
    onnx.save(model, str(path))


def test_a_wrong_constant_in_the_artifact_is_named_by_the_divergence_report(tmp_path, monkeypatch):
    export = OrtExporter.export

    def broken_export(self, source, profile, recipe, calib, workdir):
        artifact = export(self, source, profile, recipe, calib, workdir)
        _break_conv_weight(artifact.path, BROKEN)
        return artifact

    monkeypatch.setattr(OrtExporter, "export", broken_export)
    result = api.export("demo:digits", ["host-ort"], out=tmp_path, recipe_chain=["fp32"], cache=False)
    entry = result.manifest["targets"]["host-ort"]
    assert entry["status"] == "failed" and "parity" in entry["error"]
    summary = entry["divergence"]
    assert summary["summary"].startswith("first divergent layer:") and BROKEN in summary["summary"]
    report = json.loads((result.bundle / "reports/host-ort/divergence.json").read_text())
    first = report["first"]
    assert BROKEN in first["span"] and first["cosine"] < 0.9999
    compared = [layer for layer in report["layers"]]
    before = compared[: compared.index(first)]
    assert before and not any(layer["diverged"] for layer in before)  # the layers upstream still agree
    assert "reports/host-ort/divergence.json" in entry["reports"] and api.verify(result.bundle)


def test_openvino_exposes_the_source_tensors_and_an_intact_artifact_does_not_diverge(tmp_path):
    source = load_source("demo:digits")
    hub = export_onnx(source, tmp_path / "hub", dynamic=False)
    exporter = OpenVinoExporter()
    from edgepack.compress.recipe import load_recipes
    from edgepack.targets.registry import load_registry

    profile = load_registry().get("x86-openvino")
    artifact = exporter.export(source, profile, load_recipes().get("fp32"), None, tmp_path / "ov")
    feeds = example_inputs(source.inputs, batch=1, seed=3)
    report = find_divergence(hub, exporter, artifact, feeds, ParityTolerance(max_rel_error=1e-3, min_cosine=0.9999))
    assert report.compared >= 3 and report.first is None, report.summary()
    assert all(np.isfinite(layer.cosine) for layer in report.layers)


def test_a_runtime_without_intermediate_tensors_says_so(tmp_path):
    from edgepack.exporters.coreml.exporter import CoreMlExporter

    source = load_source("demo:digits")
    hub = export_onnx(source, tmp_path / "hub", dynamic=False)
    report = find_divergence(hub, CoreMlExporter(), None, example_inputs(source.inputs, batch=1), ParityTolerance())
    assert report.first is None and report.compared == 0 and "does not expose" in report.summary()


def test_the_export_summary_shows_the_divergence_line():
    from edgepack.cli import _attempt_lines

    entry = {"status": "failed", "attempts": [{"recipe": "fp32", "status": "rejected", "reason": "parity: cosine 0.16",
                                               "seconds": 1.0}],
             "divergence": {"recipe": "fp32", "summary": f"first divergent layer: {BROKEN} (Conv), rel err 3.5e+00"}}
    lines = _attempt_lines("host-ort", entry, cached=False)
    assert lines[-1] == f"  fp32 first divergent layer: {BROKEN} (Conv), rel err 3.5e+00 (reports/host-ort/divergence.json)"


def _break_second_conv_in_tflite(path) -> None:
    """Negate and double the filter of the artifact's second CONV_2D (LiteRT's own flatbuffer schema)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(path.read_bytes(), 0))
    graph = model.subgraphs[0]
    conv_code = next(i for i, code in enumerate(model.operatorCodes)
                     if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.CONV_2D)
    second = [op for op in graph.operators if op.opcodeIndex == conv_code][1]
    buffer = model.buffers[graph.tensors[second.inputs[1]].buffer]
    weights = np.frombuffer(bytes(buffer.data), dtype=np.float32) * -2.0
    buffer.data = np.frombuffer(weights.astype(np.float32).tobytes(), dtype=np.uint8)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))


def test_litert_layers_are_matched_to_the_source_and_a_broken_one_is_named(tmp_path, monkeypatch):
    from edgepack.exporters.tflite.exporter import TfliteExporter

    export = TfliteExporter.export

    def broken_export(self, source, profile, recipe, calib, workdir):
        artifact = export(self, source, profile, recipe, calib, workdir)
        _break_second_conv_in_tflite(artifact.path)
        return artifact

    monkeypatch.setattr(TfliteExporter, "export", broken_export)
    result = api.export("demo:digits", ["android-pixel8"], out=tmp_path, recipe_chain=["fp32"], cache=False)
    entry = result.manifest["targets"]["android-pixel8"]
    assert entry["status"] == "failed" and "parity" in entry["error"]
    report = json.loads((result.bundle / "reports/android-pixel8/divergence.json").read_text())
    first = report["first"]
    assert report["runtime"] == "tflite" and first is not None, report
    assert BROKEN in first["span"] and first["cosine"] < 0.9, first
    before = report["layers"][: report["layers"].index(first)]
    assert before and not any(layer["diverged"] for layer in before)  # the first conv still agrees
    assert BROKEN in entry["divergence"]["summary"]


def test_an_intact_litert_artifact_does_not_diverge(tmp_path):
    from edgepack.compress.recipe import load_recipes
    from edgepack.exporters.tflite.exporter import TfliteExporter
    from edgepack.targets.registry import load_registry

    source = load_source("demo:digits")
    hub = export_onnx(source, tmp_path / "hub", dynamic=False)
    exporter = TfliteExporter()
    book, profile = load_recipes(), load_registry().get("android-pixel8")
    feeds = source.extra["eval"].batch(0)  # in the calibrated range: int8 of out-of-range noise saturates by design
    fp32 = exporter.export(source, profile, book.get("fp32"), None, tmp_path / "fp32")
    report = find_divergence(hub, exporter, fp32, feeds, book.get("fp32").parity)
    assert report.compared >= 4 and report.first is None, report.summary()
    int8 = exporter.export(source, profile, book.get("int8"), source.extra["calib"], tmp_path / "int8")
    quantized = find_divergence(hub, exporter, int8, feeds, book.get("int8").parity)
    assert quantized.compared >= 4 and quantized.first is None, quantized.summary()  # int8 noise, not a break
    assert all(layer.cosine > 0.98 for layer in quantized.layers)
