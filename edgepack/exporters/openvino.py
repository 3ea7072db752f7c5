"""OpenVINO exporter: OpenVINO IR (``model.xml`` + ``model.bin``) converted from the ONNX hub file."""

from __future__ import annotations

from pathlib import Path

from edgepack.compress.recipe import Recipe
from edgepack.data.dataset import Dataset
from edgepack.errors import ExportError, UnsupportedError
from edgepack.exporters.base import Arrays, Artifact, Exporter, NotRunnable, Predictor
from edgepack.exporters.onnx import export_onnx
from edgepack.models.source import ModelSource
from edgepack.targets.schema import TargetProfile

SUPPORTED = ("fp32", "fp16", "int8", "int8-dynamic", "int4-weight")
QUANTIZED = ("int8", "int8-dynamic", "int4-weight")
DEFAULT_THREADS = 2


class OpenVinoPredictor(Predictor):
    """Runs an IR on OpenVINO's CPU plugin with float32 inference precision (no silent bf16)."""

    def __init__(self, xml: Path, *, threads: int = DEFAULT_THREADS) -> None:
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = core.compile_model(str(xml), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]

    def __call__(self, inputs: Arrays) -> Arrays:
        results = self.request.infer(inputs)
        return {name: results[self.compiled.output(name)].copy() for name in self.output_names}


class OpenVinoExporter(Exporter):
    """x86-openvino: OpenVINO IR for the CPU plugin."""

    runtime = "openvino"
    distributions = ("openvino", "onnx", "torch")

    def supports(self, recipe: Recipe) -> str | None:
        if recipe.precision not in SUPPORTED:
            return f"precision '{recipe.precision}' is not implemented for openvino yet"
        if recipe.precision in QUANTIZED:
            from edgepack.compress.quantize import QuantizationPlan
            from edgepack.exporters.openvino_quant import unsupported_reason

            return unsupported_reason(QuantizationPlan(recipe, None))
        return None

    def export(
        self, source: ModelSource, profile: TargetProfile, recipe: Recipe, calib: Dataset | None, workdir: Path
    ) -> Artifact:
        import openvino as ov

        reason = self.supports(recipe)
        if reason:
            raise UnsupportedError(reason)
        dynamic = profile.dynamic_shapes
        hub = export_onnx(source, workdir.parent / "_onnx", dynamic=dynamic)
        workdir.mkdir(parents=True, exist_ok=True)
        xml = workdir / "model.xml"
        settings: dict[str, object] = {"compress_to_fp16": recipe.precision == "fp16", "dynamic_shapes": dynamic}
        try:
            model = ov.convert_model(str(hub))
        except Exception as exc:  # noqa: BLE001
            raise ExportError(f"OpenVINO conversion failed: {str(exc).strip().splitlines()[0][:200]}") from None
        if recipe.precision in QUANTIZED:
            from edgepack.compress.quantize import plan
            from edgepack.exporters.openvino_quant import quantize

            model, used = quantize(model, plan(recipe, calib))
            settings |= used
        ov.save_model(model, str(xml), compress_to_fp16=recipe.precision == "fp16")
        specs = source.inputs if dynamic else [s.with_static_shape() for s in source.inputs]
        outputs = source.outputs if dynamic else [s.with_static_shape() for s in source.outputs]
        return Artifact(
            target_id=profile.id,
            runtime=self.runtime,
            path=xml,
            files=(xml, xml.with_suffix(".bin")),
            format="openvino-ir",
            precision=recipe.precision,
            recipe=recipe.name,
            inputs=tuple(specs),
            outputs=tuple(outputs),
            toolchain=self.toolchain().versions,
            converter="openvino.convert_model",
            settings=settings,
        )

    def predictor(self, artifact: Artifact, source: ModelSource) -> Predictor | NotRunnable:
        try:
            return OpenVinoPredictor(artifact.path)
        except ImportError:
            return NotRunnable("openvino is not installed: pip install openvino")
