"""ONNX Runtime (CPU) exporter: an ONNX file optimised offline by ONNX Runtime itself."""

from __future__ import annotations

import shutil
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


class OrtPredictor(Predictor):
    """Runs an ONNX file in an ONNX Runtime CPU session (names are the source's own)."""

    def __init__(self, path: Path, *, threads: int = DEFAULT_THREADS) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, inputs: Arrays) -> Arrays:
        return dict(zip(self.output_names, self.session.run(self.output_names, inputs)))


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


class OrtExporter(Exporter):
    """host-ort: ONNX optimised for ONNX Runtime's CPU execution provider."""

    runtime = "onnxruntime"
    distributions = ("onnxruntime", "onnx", "torch")

    def supports(self, recipe: Recipe) -> str | None:
        if recipe.precision not in SUPPORTED:
            return f"precision '{recipe.precision}' is not implemented for onnxruntime yet"
        if recipe.precision in QUANTIZED:
            from edgepack.compress.quantize import QuantizationPlan
            from edgepack.exporters.ort_quant import unsupported_reason

            return unsupported_reason(QuantizationPlan(recipe, None))
        return None

    def export(
        self, source: ModelSource, profile: TargetProfile, recipe: Recipe, calib: Dataset | None, workdir: Path
    ) -> Artifact:
        reason = self.supports(recipe)
        if reason:
            raise UnsupportedError(reason)
        dynamic = profile.dynamic_shapes
        hub = export_onnx(source, workdir.parent / "_onnx", dynamic=dynamic)
        workdir.mkdir(parents=True, exist_ok=True)
        final = workdir / "model.onnx"
        settings: dict[str, object] = {"dynamic_shapes": dynamic}
        if recipe.precision in QUANTIZED:
            from edgepack.compress.quantize import plan
            from edgepack.exporters.ort_quant import quantize

            # Quantized graphs ship as portable QDQ; ONNX Runtime fuses them when the session loads.
            settings |= quantize(hub, final, plan(recipe, calib))
        else:
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
            settings["opt_level"] = "ORT_ENABLE_EXTENDED"
        specs = source.inputs if dynamic else [s.with_static_shape() for s in source.inputs]
        outputs = source.outputs if dynamic else [s.with_static_shape() for s in source.outputs]
        return Artifact(
            target_id=profile.id,
            runtime=self.runtime,
            path=final,
            files=(final,),
            format="onnx",
            precision=recipe.precision,
            recipe=recipe.name,
            inputs=tuple(specs),
            outputs=tuple(outputs),
            toolchain=self.toolchain().versions,
            converter="torch.onnx" if source.torch_module is not None else "onnx",
            settings=settings,
        )

    def predictor(self, artifact: Artifact, source: ModelSource) -> Predictor | NotRunnable:
        try:
            return OrtPredictor(artifact.path)
        except ImportError:
            return NotRunnable("onnxruntime is not installed: pip install onnxruntime")


