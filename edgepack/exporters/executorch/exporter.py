"""ExecuTorch exporter: a ``.pte`` program with the XNNPACK delegate, lowered from ``torch.export``.

The artifact is ``model.pte`` plus ``executorch.json`` (the program's hash and every lowered op with where it
runs: XNNPACK or the portable kernels, and the partitioner's reason) and ``contract.json`` (the deployment
contract; a ``.pte`` has no free-form metadata slot). The program runs here in ExecuTorch's Python runtime,
with the same XNNPACK kernels the phone runs, so parity and the gate are measured on the artifact itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from edgepack.compress.quantize import QuantizationPlan, plan
from edgepack.compress.recipe import Recipe
from edgepack.contract.metadata import Contract
from edgepack.data.dataset import Dataset
from edgepack.errors import UnsupportedError
from edgepack.exporters.base import Artifact, BenchAdapter, Capabilities, Exporter, NotRunnable, Packaging, Predictor
from edgepack.exporters.executorch.graph import CONTRACT, delegation_summary, executorch_graph_ops, write_descriptor
from edgepack.exporters.executorch.predictor import DEFAULT_THREADS, ExecutorchPredictor, set_threads
from edgepack.models.source import ModelSource
from edgepack.targets.placement import GraphOp
from edgepack.targets.schema import TargetProfile

PROGRAM = "model.pte"
PRECISIONS = ("fp32", "int8", "int8-dynamic")


def bench_predictor(artifact: Artifact, threads: int | None) -> tuple[Predictor, int]:
    """The host bench's predictor: ExecuTorch's thread pool resized to ``threads`` (default
    :data:`DEFAULT_THREADS`)."""
    count = threads or DEFAULT_THREADS
    set_threads(count)
    return ExecutorchPredictor(artifact.path, artifact.inputs, artifact.outputs), count


class ExecutorchExporter(Exporter):
    """android-executorch: an ExecuTorch program, XNNPACK-delegated, quantized with the XNNPACK PT2E quantizer."""

    runtime = "executorch"
    capabilities = Capabilities(
        op_vocabulary="executorch",
        graph_formats=frozenset({"pte"}),
        bench=BenchAdapter("executorch.runtime", "executorch", bench_predictor),
        packaging=(Packaging("pte", "android", distribution="executorch", app_library="org.pytorch:executorch-android",
                             app_templates="android/executorch"),
                   Packaging("pte", "python", distribution="executorch", python_runtime="executorch",
                             python_module="executorch", snippet=("python/run.py", "snippets/run.py.j2")),),
        templates=Path(__file__).with_name("templates"),
    )
    distributions: ClassVar[tuple[str, ...]] = ("executorch", "torchao", "torch")
    artifact_formats = {"pte": ".pte"}

    def supports(self, recipe: Recipe) -> str | None:
        if recipe.precision not in PRECISIONS:
            return f"precision '{recipe.precision}' is not implemented for executorch (offered: {', '.join(PRECISIONS)})"
        if recipe.precision != "fp32":
            from edgepack.exporters.executorch.quant import unsupported_reason

            return unsupported_reason(QuantizationPlan(recipe, None))
        return None

    def export(
        self, source: ModelSource, profile: TargetProfile, recipe: Recipe, calib: Dataset | None, workdir: Path
    ) -> Artifact:
        self.require_support(recipe)
        if source.torch_module is None and source.exported_program is None:
            raise UnsupportedError(f"ExecuTorch lowers torch.export programs; {source.uri} is an ONNX file with no "
                                   "PyTorch module: export this target from the PyTorch model instead")
        if source.extra.get("postprocess"):
            raise UnsupportedError("--postprocess nms is not built for ExecuTorch yet; export ExecuTorch targets "
                                   "without --postprocess")
        from edgepack.exporters.executorch.lower import lower

        quantization = plan(recipe, calib) if recipe.precision != "fp32" else None
        lowered = lower(source, quantization)
        workdir.mkdir(parents=True, exist_ok=True)
        program = workdir / PROGRAM
        program.write_bytes(lowered.program)
        settings = {"dynamic_shapes": False, **lowered.settings, "delegation": delegation_summary(lowered.ops)}
        descriptor = write_descriptor(program, lowered.ops, {"recipe": recipe.name, **lowered.settings})
        inputs = tuple(s.with_static_shape() for s in source.inputs)
        outputs = tuple(s.with_static_shape() for s in source.outputs)
        artifact = Artifact(
            target_id=profile.id, runtime=self.runtime, path=program,
            files=(program, descriptor, workdir / CONTRACT), format="pte", precision=recipe.precision,
            recipe=recipe.name, inputs=inputs, outputs=outputs, toolchain=self.toolchain().versions,
            converter="torch.export + executorch.exir (XNNPACK)", settings=settings,
            notes=("Load model.pte with ExecuTorch's Module API (the runtime must include the XNNPACK backend); "
                   "contract.json holds labels and preprocessing.",),
        )
        self.embed_contract(artifact, Contract.for_artifact(source, artifact))
        return artifact

    def embed_contract(self, artifact: Artifact, contract: Contract) -> None:
        """Write ``contract.json`` beside the program."""
        artifact.path.with_name(CONTRACT).write_text(contract.to_json() + "\n")

    def predictor(self, artifact: Artifact, source: ModelSource) -> Predictor | NotRunnable:
        try:
            return ExecutorchPredictor(artifact.path, artifact.inputs, artifact.outputs)
        except ImportError:
            return NotRunnable("executorch is not installed: pip install executorch")

    def graph_ops(self, path: Path, fmt: str) -> list[GraphOp]:
        """The lowered program's ops, from ``executorch.json`` beside ``path``."""
        return executorch_graph_ops(path)
