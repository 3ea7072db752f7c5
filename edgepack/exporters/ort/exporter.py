"""ONNX Runtime (CPU) exporter: an ONNX file optimised offline by ONNX Runtime, or quantized by its own
quantizer (QDQ int8, dynamic int8, MatMulNBits int4)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edgepack.compress.quantize import QuantizationPlan
from edgepack.compress.recipe import Recipe
from edgepack.contract.metadata import Contract
from edgepack.errors import ExportError
from edgepack.exporters.base import Arrays, Artifact, BenchAdapter, Capabilities, NotRunnable, Packaging, Predictor
from edgepack.exporters.onnx.exporter import OnnxHubExporter
from edgepack.exporters.onnx.graph import onnx_graph_ops
from edgepack.exporters.ort.predictor import DEFAULT_THREADS, OrtPredictor
from edgepack.models.source import ModelSource
from edgepack.targets.placement import GraphOp


def optimise_offline(src: Path, dst: Path) -> None:
    """Apply ONNX Runtime's hardware-independent (``EXTENDED``) graph optimisations and save the result."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])


def to_fp16(src: Path, dst: Path) -> None:
    """Float16 weights and compute with float32 graph inputs/outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def bench_predictor(artifact: Artifact, threads: int | None) -> tuple[Predictor, int]:
    """The host bench's predictor: ``threads`` intra-op threads (default :data:`DEFAULT_THREADS`)."""
    count = threads or DEFAULT_THREADS
    return OrtPredictor(artifact.path, threads=count), count


class OrtExporter(OnnxHubExporter):
    """host-ort: ONNX optimised for ONNX Runtime's CPU execution provider."""

    runtime = "onnxruntime"
    capabilities = Capabilities(
        op_vocabulary="onnx",
        graph_formats=frozenset({"onnx"}),
        bench=BenchAdapter("onnxruntime", "onnxruntime", bench_predictor),
        keeps_scopes_float=True,  # nodes_to_exclude takes node-name prefixes
        packaging=(Packaging("onnx", "python", distribution="onnxruntime", python_runtime="onnxruntime",
                             python_module="onnxruntime", snippet=("python/run.py", "snippets/run.py.j2")),),
        templates=Path(__file__).with_name("templates"),
    )
    distributions = ("onnxruntime", "onnx", "torch")
    precisions = ("fp32", "fp16", "int8", "int8-dynamic", "int4-weight")
    artifact_format = "onnx"
    artifact_formats = {"onnx": ".onnx"}
    converter = "onnxruntime"

    def quantization_reason(self, plan: QuantizationPlan) -> str | None:
        from edgepack.exporters.ort.quant import unsupported_reason

        return unsupported_reason(plan)

    def convert(
        self, hub: Path, recipe: Recipe, quantization: QuantizationPlan | None, workdir: Path
    ) -> tuple[tuple[Path, ...], dict[str, object]]:
        final = workdir / "model.onnx"
        if quantization is not None:
            from edgepack.exporters.ort.quant import quantize

            # Quantized graphs ship as portable QDQ / MatMulNBits; ONNX Runtime fuses them at session load.
            return (final,), quantize(hub, final, quantization)
        staged = workdir / "staged.onnx"
        if recipe.precision == "fp16":
            to_fp16(hub, staged)
        else:
            shutil.copyfile(hub, staged)
        try:
            optimise_offline(staged, final)
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"ONNX Runtime offline optimisation failed: {str(exc).splitlines()[0][:200]}") from None
        staged.unlink()
        return (final,), {"opt_level": "ORT_ENABLE_EXTENDED"}

    def embed_contract(self, artifact: Artifact, contract: Contract) -> None:
        from edgepack.exporters.onnx.contract import write_onnx_contract

        write_onnx_contract(artifact.path, contract)

    def predictor(self, artifact: Artifact, source: ModelSource) -> Predictor | NotRunnable:
        try:
            return OrtPredictor(artifact.path)
        except ImportError:
            return NotRunnable("onnxruntime is not installed: pip install onnxruntime")

    def intermediate_values(self, artifact: Artifact, tensors: list[str], feeds: Arrays, *,
                            hub: Path) -> dict[str, np.ndarray]:
        """Tensors keep their ONNX names in the artifact (those fused away by the offline optimisation are absent)."""
        from edgepack.exporters.onnx.hub import onnx_values

        return onnx_values(artifact.path, tensors, feeds)

    def graph_ops(self, path: Path, fmt: str) -> list[GraphOp]:
        return onnx_graph_ops(path)
