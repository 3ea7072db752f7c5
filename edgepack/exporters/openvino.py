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
from edgepack.exporters.base import Arrays, Artifact, NotRunnable, Predictor
from edgepack.exporters.hub import OnnxHubExporter
from edgepack.models.source import ModelSource

DEFAULT_THREADS = 2


class OpenVinoPredictor(Predictor):
    """Runs an IR on OpenVINO's CPU plugin with float32 inference precision (no silent bf16)."""

    runtime_clock = "openvino InferRequest.latency (benchmark_app's clock)"

    def __init__(self, xml: Path, *, threads: int = DEFAULT_THREADS) -> None:
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        model = core.read_model(str(xml))
        # Output names from the IR: compiling can fuse an output's producer (e.g. Shape -> Cast) and give its
        # port a second, internal name that get_any_name() may pick.
        names = [port.get_any_name() for port in model.outputs]
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self._tensor = ov.Tensor
        self._inputs = {name: port for port in self.compiled.inputs for name in port.get_names()}
        self._outputs = list(zip(names, self.compiled.outputs))
        self.output_names = [name for name, _ in self._outputs]

    def __call__(self, inputs: Arrays) -> Arrays:
        # Zero-copy inputs and cached ports: the per-call cost is what device_bench measures on small models.
        for name, array in inputs.items():
            self.request.set_tensor(self._inputs[name], self._tensor(np.ascontiguousarray(array), shared_memory=True))
        self.request.infer()
        return {name: self.request.get_tensor(port).data.copy() for name, port in self._outputs}

    def runtime_latency_ms(self) -> float | None:
        return float(self.request.latency)


class OpenVinoExporter(OnnxHubExporter):
    """x86-openvino: OpenVINO IR for the CPU plugin (quantized through NNCF)."""

    runtime = "openvino"
    distributions = ("openvino", "nncf", "onnx", "torch")
    precisions = ("fp32", "fp16", "int8", "int8-dynamic", "int4-weight")
    artifact_format = "openvino-ir"
    artifact_formats = {"openvino-ir": ".xml"}
    converter = "openvino.convert_model"

    def quantization_reason(self, plan: QuantizationPlan) -> str | None:
        from edgepack.exporters.openvino_quant import unsupported_reason

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
            from edgepack.exporters.openvino_quant import quantize

            model, used = quantize(model, quantization)
            settings |= used
        _stable_friendly_names(model)
        ov.save_model(model, str(xml), compress_to_fp16=recipe.precision == "fp16")
        return (xml, xml.with_suffix(".bin")), settings

    def embed_contract(self, artifact: Artifact, contract: Contract) -> None:
        from edgepack.contract.openvino_meta import write_openvino_contract

        write_openvino_contract(artifact.path, contract)

    def predictor(self, artifact: Artifact, source: ModelSource) -> Predictor | NotRunnable:
        try:
            return OpenVinoPredictor(artifact.path)
        except ImportError:
            return NotRunnable("openvino is not installed: pip install openvino")

    def intermediate_values(self, artifact: Artifact, tensors: list[str], feeds: Arrays) -> dict[str, np.ndarray]:
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
