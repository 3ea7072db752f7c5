"""OpenVINO exporter: OpenVINO IR (``model.xml`` + ``model.bin``) converted from the ONNX hub file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.compress.quantize import QuantizationPlan
from edgepack.compress.recipe import Recipe
from edgepack.contract.metadata import Contract
from edgepack.errors import ExportError
from edgepack.exporters.base import Arrays, Artifact, BenchAdapter, Capabilities, NotRunnable, Packaging, Predictor
from edgepack.exporters.onnx.exporter import OnnxHubExporter
from edgepack.exporters.openvino.predictor import DEFAULT_THREADS, OpenVinoPredictor
from edgepack.models.source import ModelSource


def bench_predictor(artifact: Artifact, threads: int | None) -> tuple[Predictor, int]:
    """The host bench's predictor: ``threads`` inference threads (default :data:`DEFAULT_THREADS`)."""
    count = threads or DEFAULT_THREADS
    return OpenVinoPredictor(artifact.path, threads=count), count


class OpenVinoExporter(OnnxHubExporter):
    """x86-openvino: OpenVINO IR for the CPU plugin (quantized through NNCF)."""

    runtime = "openvino"
    capabilities = Capabilities(
        # Its own opset, which nothing here reads: placement on OpenVINO profiles runs on the ONNX hub graph.
        op_vocabulary="openvino",
        bench=BenchAdapter("openvino", "openvino", bench_predictor),
        keeps_scopes_float=True,  # NNCF's ignored scope takes node-name patterns
        packaging=(Packaging("openvino-ir", "python", distribution="openvino", python_runtime="openvino",
                             python_module="openvino", snippet=("python/run.py", "snippets/run.py.j2")),),
        templates=Path(__file__).with_name("templates"),
    )
    distributions = ("openvino", "nncf", "onnx", "torch")
    precisions = ("fp32", "fp16", "int8", "int8-dynamic", "int4-weight")
    artifact_format = "openvino-ir"
    artifact_formats = {"openvino-ir": ".xml"}
    converter = "openvino.convert_model"

    def quantization_reason(self, plan: QuantizationPlan) -> str | None:
        from edgepack.exporters.openvino.quant import unsupported_reason

        return unsupported_reason(plan)

    def convert(
        self, hub: Path, recipe: Recipe, quantization: QuantizationPlan | None, workdir: Path
    ) -> tuple[tuple[Path, ...], dict[str, object]]:
        import openvino as ov

        xml = workdir / "model.xml"
        settings: dict[str, object] = {"compress_to_fp16": recipe.precision == "fp16"}
        try:
            model = ov.convert_model(str(hub))
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"OpenVINO conversion failed: {str(exc).strip().splitlines()[0][:200]}") from None
        if quantization is not None:
            from edgepack.exporters.openvino.quant import quantize

            model, used = quantize(model, quantization)
            settings |= used
        _stable_friendly_names(model)
        ov.save_model(model, str(xml), compress_to_fp16=recipe.precision == "fp16")
        return (xml, xml.with_suffix(".bin")), settings

    def embed_contract(self, artifact: Artifact, contract: Contract) -> None:
        from edgepack.exporters.openvino.contract import write_openvino_contract

        write_openvino_contract(artifact.path, contract)

    def predictor(self, artifact: Artifact, source: ModelSource) -> Predictor | NotRunnable:
        try:
            return OpenVinoPredictor(artifact.path)
        except ImportError:
            return NotRunnable("openvino is not installed: pip install openvino")

    def intermediate_values(self, artifact: Artifact, tensors: list[str], feeds: Arrays, *,
                            hub: Path) -> dict[str, np.ndarray]:
        """The IR keeps the ONNX tensor names on the outputs of the ops that compute them: each is made a model
        output (names the conversion folded away are skipped) and read back in float32 precision."""
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(artifact.path))
        known = {name for op in model.get_ordered_ops() for output in op.outputs() for name in output.get_names()}
        wanted = [name for name in dict.fromkeys(tensors) if name in known]
        if wanted:
            model.add_outputs(wanted)
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        results = compiled(dict(feeds))
        values: dict[str, np.ndarray] = {}
        for port in compiled.outputs:
            for name in port.get_names():
                if name in wanted:
                    values[name] = np.asarray(results[port])
        return values


_COUNTER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*_[0-9]+")


def _stable_friendly_names(model: Any) -> None:
    """Replace OpenVINO's auto-generated layer names (``Constant_31174``, ``Reshape_45429`` after constant
    folding: a process-wide counter) with ``<Type>_<topological index>``, so the same model always
    serialises to the same bytes. Path-like names from the source graph (``/features/0/Conv``) are kept;
    tensor (port) names are never touched."""
    for index, node in enumerate(model.get_ordered_ops()):
        name = node.get_friendly_name()
        if name == node.get_name() or _COUNTER_NAME.fullmatch(name):
            node.set_friendly_name(f"{node.get_type_name()}_{index}")
