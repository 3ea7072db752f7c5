"""Shared shape of exporters that convert the ONNX hub file in-process and keep the source's I/O names
(ONNX Runtime, OpenVINO): recipe checks, the hub file, I/O specs and the :class:`Artifact` record."""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import ClassVar

from edgepack.compress.quantize import QuantizationPlan, plan
from edgepack.compress.recipe import Recipe
from edgepack.data.dataset import Dataset
from edgepack.contract.metadata import Contract
from edgepack.exporters.base import Artifact, Exporter
from edgepack.exporters.onnx.hub import export_onnx, is_prequantized
from edgepack.models.source import ModelSource
from edgepack.targets.schema import TargetProfile

QUANTIZED = ("int8", "int8-dynamic", "int4-weight")


class OnnxHubExporter(Exporter):
    """Subclasses set ``precisions``, ``artifact_format`` and ``converter`` and implement :meth:`convert`."""

    precisions: ClassVar[tuple[str, ...]]
    artifact_format: ClassVar[str]
    converter: ClassVar[str]

    def quantization_reason(self, plan: QuantizationPlan) -> str | None:
        """Why this runtime's quantizer cannot apply ``plan`` (``None`` when it can)."""
        return None

    def supports(self, recipe: Recipe) -> str | None:
        if recipe.precision not in self.precisions:
            return f"precision '{recipe.precision}' is not implemented for {self.runtime} yet"
        if recipe.precision in QUANTIZED:
            return self.quantization_reason(QuantizationPlan(recipe, None))
        return None

    @abstractmethod
    def convert(
        self, hub: Path, recipe: Recipe, quantization: QuantizationPlan | None, workdir: Path
    ) -> tuple[tuple[Path, ...], dict[str, object]]:
        """Write the artifact into ``workdir``; return its files (main file first) and the settings used."""

    def export(
        self, source: ModelSource, profile: TargetProfile, recipe: Recipe, calib: Dataset | None, workdir: Path
    ) -> Artifact:
        self.require_support(recipe)
        dynamic = profile.dynamic_shapes
        hub = export_onnx(source, workdir.parent / "_onnx", dynamic=dynamic)
        workdir.mkdir(parents=True, exist_ok=True)
        prequantized = is_prequantized(source)
        quantization = plan(recipe, calib) if recipe.precision in QUANTIZED and not prequantized else None
        files, settings = self.convert(hub, recipe, quantization, workdir)
        if prequantized:
            settings = {**settings, "mode": "qat-qdq", "quantized_by": "edgepack qat pass (NNCF fake-quant)"}
        inputs = source.inputs if dynamic else [s.with_static_shape() for s in source.inputs]
        outputs = source.outputs if dynamic else [s.with_static_shape() for s in source.outputs]
        artifact = Artifact(
            target_id=profile.id,
            runtime=self.runtime,
            path=files[0],
            files=files,
            format=self.artifact_format,
            precision=recipe.precision,
            recipe=recipe.name,
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            toolchain=self.toolchain().versions,
            converter=self.converter if source.torch_module is None else f"torch.onnx + {self.converter}",
            settings={"dynamic_shapes": dynamic, **settings},
        )
        self.embed_contract(artifact, Contract.for_artifact(source, artifact))
        return artifact
