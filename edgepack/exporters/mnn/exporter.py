"""MNN exporter: a ``.mnn`` model converted from the ONNX hub file by MNNConvert (fp32, ``--fp16`` weights,
``--weightQuantBits 8`` weight-only int8) or quantized to static int8 by MNN's own post-training quantizer."""

from __future__ import annotations

import shutil
from pathlib import Path

from edgepack.compress.quantize import QuantizationPlan
from edgepack.compress.recipe import Recipe
from edgepack.contract.metadata import Contract
from edgepack.exporters.base import Artifact, BenchAdapter, Capabilities, NotRunnable, Packaging, Predictor
from edgepack.exporters.mnn.predictor import DEFAULT_THREADS, MnnPredictor
from edgepack.exporters.onnx.exporter import OnnxHubExporter
from edgepack.models.source import ModelSource
from edgepack.targets.placement import GraphOp

CONVERTER_OPTIONS: dict[str, list[str]] = {
    "fp32": [],
    "fp16": ["--fp16"],
    "int8-dynamic": ["--weightQuantBits", "8"],
    "int8": [],
}
"""MNNConvert options per precision (static int8 converts fp32 first, then runs the quantizer)."""


def _predictor(artifact: Artifact, threads: int) -> MnnPredictor:
    """Static-batch artifacts run in slices of their batch; full-int8 ones one sample at a time, the batch MNN's
    quantizer calibrated them with."""
    first = artifact.inputs[0].shape[0] if artifact.inputs and artifact.inputs[0].shape else None
    batch = 1 if artifact.precision == "int8" else first if isinstance(first, int) else None
    return MnnPredictor(artifact.path, [s.name for s in artifact.inputs], [s.name for s in artifact.outputs],
                        batch=batch, threads=threads)


def bench_predictor(artifact: Artifact, threads: int | None) -> tuple[Predictor, int]:
    """The host bench's predictor: ``threads`` CPU threads (default :data:`DEFAULT_THREADS`)."""
    count = threads or DEFAULT_THREADS
    return _predictor(artifact, count), count


class MnnExporter(OnnxHubExporter):
    """android-mnn: MNN models for MNN's ARM CPU backend (its OpenCL/Vulkan backends load the same file)."""

    runtime = "mnn"
    capabilities = Capabilities(
        op_vocabulary="mnn",
        graph_formats=frozenset({"mnn"}),
        bench=BenchAdapter("edgepack.exporters.mnn.runtime", "mnn", bench_predictor),
        packaging=(Packaging("mnn", "python", distribution="mnn", python_runtime="mnn", python_module="MNN",
                             snippet=("python/run.py", "snippets/run.py.j2")),),
        templates=Path(__file__).with_name("templates"),
    )
    distributions = ("mnn", "onnx", "torch")
    precisions = tuple(CONVERTER_OPTIONS)
    artifact_format = "mnn"
    artifact_formats = {"mnn": ".mnn"}
    converter = "MNNConvert"

    def quantization_reason(self, plan: QuantizationPlan) -> str | None:
        from edgepack.exporters.mnn.quant import unsupported_reason

        return unsupported_reason(plan)

    def convert(
        self, hub: Path, recipe: Recipe, quantization: QuantizationPlan | None, workdir: Path
    ) -> tuple[tuple[Path, ...], dict[str, object]]:
        from edgepack.exporters.mnn.tools import mnnconvert

        model = workdir / "model.mnn"
        options = CONVERTER_OPTIONS[recipe.precision]
        if quantization is None or not quantization.static:
            mnnconvert(hub, model, options)
            mode = {"int8-dynamic": {"mode": "weight-only", "weights": "int8 symmetric per output channel"}}
            return (model,), {"converter_options": options, **mode.get(recipe.precision, {})}
        return (model,), self._quantize(hub, model, quantization, workdir)

    def _quantize(self, hub: Path, model: Path, plan: QuantizationPlan, workdir: Path) -> dict[str, object]:
        from edgepack.exporters.mnn.quant import settings, write_calibration, write_config
        from edgepack.exporters.mnn.tools import mnnconvert, mnnquant

        scratch = workdir / "_mnnquant"
        shutil.rmtree(scratch, ignore_errors=True)
        float_model = scratch / "float.mnn"
        try:
            scratch.mkdir(parents=True)
            mnnconvert(hub, float_model, [])
            samples, shapes = write_calibration(plan, scratch / "calibration")
            mnnquant(float_model, model, write_config(plan, scratch / "calibration", samples, shapes))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return settings(plan, samples)

    def embed_contract(self, artifact: Artifact, contract: Contract) -> None:
        from edgepack.exporters.mnn.contract import write_mnn_contract

        write_mnn_contract(artifact.path, contract)

    def predictor(self, artifact: Artifact, source: ModelSource) -> Predictor | NotRunnable:
        try:
            return _predictor(artifact, DEFAULT_THREADS)
        except ImportError:
            return NotRunnable("mnn is not installed: pip install mnn")

    def graph_ops(self, path: Path, fmt: str) -> list[GraphOp]:
        from edgepack.exporters.mnn.graph import mnn_graph_ops

        return mnn_graph_ops(path)
