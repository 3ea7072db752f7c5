"""NCNN exporter: pnnx's ``model.param`` + ``model.bin`` for ncnn's CPU (and Vulkan) runtime.

fp32 and fp16 (pnnx ``fp16=1``: half-precision weights) come straight from pnnx; int8 is ncnn's own
post-training quantization (``ncnn2table`` + ``ncnn2int8``), computed here from edgepack's calibration data
(:mod:`~edgepack.exporters.ncnn.calibration`, :mod:`~edgepack.exporters.ncnn.int8`) because the pip wheels
ship neither tool; the calibration table ships with the artifact as ``model.table``. ncnn has no metadata slot,
so the contract travels as ``model.contract.json`` beside the model.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.compress.quantize import QuantizationPlan, plan
from edgepack.compress.recipe import Recipe
from edgepack.contract.metadata import Contract
from edgepack.data.dataset import Dataset
from edgepack.errors import UnsupportedError
from edgepack.exporters.base import (
    Artifact,
    BenchAdapter,
    Capabilities,
    Exporter,
    NotRunnable,
    Packaging,
    Predictor,
)
from edgepack.exporters.ncnn.calibration import METHODS, QUANTIZABLE, CalibrationTable, activation_scales
from edgepack.exporters.ncnn.contract import contract_path, write_ncnn_contract
from edgepack.exporters.ncnn.options import runtime_options
from edgepack.exporters.ncnn.param import Layer, read_param
from edgepack.exporters.ncnn.predictor import BENCH_THREADS, DEFAULT_THREADS, NcnnPredictor, open_net, run_sample
from edgepack.models.source import ModelSource, TensorSpec
from edgepack.targets.placement import GraphOp
from edgepack.targets.schema import TargetProfile

FORMAT = "ncnn"
PRECISIONS = ("fp32", "fp16", "int8")


def bench_predictor(artifact: Artifact, threads: int | None) -> tuple[Predictor, int]:
    """The host bench's predictor: ``threads`` ncnn threads (``net.opt.num_threads``, default 2)."""
    count = threads or BENCH_THREADS
    return NcnnPredictor(artifact, threads=count), count


def _io_maps(source: ModelSource, layers: list[Layer]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Source name -> ncnn blob (pnnx names them ``in0..``/``out0..`` in forward order), per-sample reshape."""
    inputs = [layer.tops[0] for layer in layers if layer.type == "Input"]
    if len(inputs) != len(source.inputs):
        raise UnsupportedError(f"pnnx's ncnn model has {len(inputs)} inputs, the source {len(source.inputs)}")
    blobs = {blob for layer in layers for blob in layer.tops}
    outputs = [f"out{i}" for i in range(len(source.outputs))]
    if not set(outputs) <= blobs:
        raise UnsupportedError(f"pnnx's ncnn model lacks output blob(s) {sorted(set(outputs) - blobs)} "
                               f"for the source's {len(source.outputs)} outputs")
    input_map = {spec.name: {"name": blob, "perm": list(range(len(spec.shape))), "shape": None, "position": i}
                 for i, (spec, blob) in enumerate(zip(source.inputs, inputs))}
    output_map = {spec.name: {"name": blob, "perm": list(range(len(spec.shape))),
                              "shape": list(spec.concrete_shape(1)), "position": i}
                  for i, (spec, blob) in enumerate(zip(source.outputs, outputs))}
    return input_map, output_map


def _renamed(specs: list[TensorSpec], mapping: dict[str, Any]) -> tuple[TensorSpec, ...]:
    """The source specs at batch 1 under their ncnn blob names (the artifact's view)."""
    return tuple(replace(spec.with_static_shape(), name=mapping[spec.name]["name"]) for spec in specs)


class NcnnExporter(Exporter):
    """NCNN: pnnx conversion, fp16 weights, ncnn-format int8 post-training quantization."""

    runtime = "ncnn"
    capabilities = Capabilities(
        op_vocabulary="ncnn",
        graph_formats=frozenset({FORMAT}),
        bench=BenchAdapter("ncnn", "ncnn", bench_predictor),
        packaging=(Packaging(FORMAT, "python", distribution="ncnn", python_runtime="ncnn", python_module="ncnn",
                             snippet=("python/run.py", "snippets/run.py.j2")),),
        templates=Path(__file__).with_name("templates"),
    )
    distributions = ("ncnn", "pnnx", "torch")
    artifact_formats = {FORMAT: ".param"}

    def supports(self, recipe: Recipe) -> str | None:
        if recipe.precision not in PRECISIONS:
            return f"precision '{recipe.precision}' is not implemented for ncnn (fp32, fp16, int8)"
        if recipe.precision != "int8":
            return None
        q = recipe.quantization
        if q.io != "float":
            return "ncnn int8 keeps float model I/O (layers quantize their own inputs); integer I/O is not offered"
        if q.activations != "int8":
            return "ncnn post-training quantization has int8 activations only (no int16)"
        if recipe.calibration.method not in METHODS:
            return (f"calibration method '{recipe.calibration.method}' is not offered for ncnn "
                    f"(use {', '.join(METHODS)})")
        return None

    def excludable_layers(self, source: ModelSource, profile: TargetProfile, recipe: Recipe, calib: Dataset | None,
                          workdir: Path, layers: list[str]) -> list[str]:
        """None: ncnn int8 exclusions name pnnx's ncnn layers (``convrelu_3``), not the ONNX hub's nodes."""
        return []

    def export(
        self, source: ModelSource, profile: TargetProfile, recipe: Recipe, calib: Dataset | None, workdir: Path
    ) -> Artifact:
        self.require_support(recipe)
        from edgepack.exporters.ncnn.convert import convert
        from edgepack.exporters.onnx.hub import export_onnx

        quantization = plan(recipe, calib) if recipe.precision == "int8" else None
        workdir.mkdir(parents=True, exist_ok=True)
        scratch = workdir / "_pnnx"
        shutil.rmtree(scratch, ignore_errors=True)
        converted = convert(source, scratch, fp16=recipe.precision == "fp16",
                            hub=lambda: export_onnx(source, workdir.parent / "_onnx_static", dynamic=False))
        layers = read_param(converted.param)
        input_map, output_map = _io_maps(source, layers)
        param, weights = workdir / "model.param", workdir / "model.bin"
        files = [param, weights]
        settings: dict[str, Any] = {"dynamic_shapes": False, "input_map": input_map, "output_map": output_map,
                                    "ncnn_options": runtime_options(recipe.precision),
                                    "weights": "fp16" if recipe.precision == "fp16" else "fp32"}
        if quantization is not None:
            table = workdir / "model.table"
            settings |= self._quantize(converted.param, converted.bin, layers, input_map, quantization,
                                       param, weights, table)
            files.append(table)
        else:
            shutil.copyfile(converted.param, param)
            shutil.copyfile(converted.bin, weights)
        shutil.rmtree(scratch, ignore_errors=True)
        files.append(contract_path(param))
        notes = ()
        if quantization is not None and not recipe.quantization.symmetric_activations:
            notes = ("activations are quantized symmetrically (ncnn's only int8 scheme); the recipe's asymmetric "
                     "activation ranges do not apply",)
        artifact = Artifact(
            target_id=profile.id, runtime=self.runtime, path=param, files=tuple(files), format=FORMAT,
            precision=recipe.precision, recipe=recipe.name, inputs=_renamed(source.inputs, input_map),
            outputs=_renamed(source.outputs, output_map), toolchain=self.toolchain().versions,
            converter=converted.converter, settings=settings, notes=notes,
        )
        self.embed_contract(artifact, Contract.for_artifact(source, artifact))
        return artifact

    def _quantize(self, float_param: Path, float_bin: Path, layers: list[Layer], input_map: dict[str, Any],
                  quantization: QuantizationPlan, param: Path, weights: Path, table_path: Path) -> dict[str, Any]:
        """ncnn2table + ncnn2int8 on the float model; the settings used."""
        from edgepack.exporters.ncnn.int8 import table_weights, write_int8

        recipe = quantization.recipe
        names = {layer.name for layer in layers}
        unknown = [name for name in recipe.exclude if name not in names]
        if unknown:
            raise UnsupportedError(f"exclude names {unknown} are not layers of the ncnn model; ncnn int8 exclusions "
                                   "name its layers (see the .param file)")
        chosen = [layer for layer in layers if layer.type in QUANTIZABLE and not layer.int_param(19, 0)
                  and not layer.int_param(8, 0) and layer.name not in recipe.exclude]
        if not chosen:
            raise UnsupportedError("the ncnn model has no Convolution, ConvolutionDepthWise or InnerProduct layer "
                                   "to quantize")
        net = open_net(float_param, float_bin, "fp32", DEFAULT_THREADS)

        def samples() -> Iterator[dict[str, np.ndarray]]:
            for batch in quantization.calibration_batches():
                count = len(next(iter(batch.values())))
                for index in range(count):
                    yield {entry["name"]: np.asarray(batch[source])[index] for source, entry in input_map.items()}

        try:
            activations = activation_scales(chosen, samples, lambda feed, blobs: run_sample(net, feed, blobs),
                                            method=recipe.calibration.method, percentile=recipe.calibration.percentile)
        finally:
            net.clear()
        per_channel = recipe.quantization.per_channel
        table = CalibrationTable(table_weights(chosen, float_param, float_bin, per_channel=per_channel), activations)
        table_path.write_text(table.text())
        quantized = write_int8(float_param, float_bin, table, param, weights)
        return {"mode": "ncnn2int8", "table": table_path.name, "calibration": recipe.calibration.method,
                "calibration_samples": recipe.calibration.samples, "per_channel": recipe.quantization.per_channel,
                "activations": "int8 symmetric per-tensor (ncnn's only int8 activation scheme)",
                "quantized_layers": quantized, "excluded_layers": list(recipe.exclude)}

    def embed_contract(self, artifact: Artifact, contract: Contract) -> None:
        write_ncnn_contract(artifact.path, contract)

    def predictor(self, artifact: Artifact, source: ModelSource) -> Predictor | NotRunnable:
        try:
            return NcnnPredictor(artifact)
        except ImportError:
            return NotRunnable("ncnn is not installed: pip install ncnn")

    def graph_ops(self, path: Path, fmt: str) -> list[GraphOp]:
        from edgepack.exporters.ncnn.graph import ncnn_graph_ops

        return ncnn_graph_ops(path)
