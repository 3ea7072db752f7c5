"""Coral Edge TPU exporter: a full-integer TFLite (uint8/int8 I/O, static shapes) plus the Edge TPU compile step.

The compiled ``*_edgetpu.tflite`` needs ``edgetpu_compiler`` (not on PyPI or Debian, so usually absent here):
when it is on PATH it runs and its log is parsed into the artifact settings; otherwise the bundle carries the
full-integer model, ``compile_edgetpu.sh`` with the exact command, and the manifest says it is compiled on a
machine with the compiler. Numerics are checked by running the full-integer model on LiteRT's CPU kernels (the
same quantized ops the TPU executes), labelled as a proxy; no latency is claimed.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

from edgepack.compress.recipe import Recipe
from edgepack.contract.metadata import Contract
from edgepack.data.dataset import Dataset
from edgepack.errors import ExportError
from edgepack.exporters.base import Artifact, Capabilities, NotRunnable, Predictor
from edgepack.exporters.tflite.exporter import TfliteExporter
from edgepack.exporters.tflite.model_io import TflitePredictor
from edgepack.models.source import ModelSource
from edgepack.targets.schema import TargetProfile

PARAMETER_CACHE_BYTES = 8 * 1024 * 1024
"""On-chip SRAM for parameters (Coral docs: roughly 8 MB); weights beyond it stream from host memory."""
COMPILER = "edgetpu_compiler"
COMPILE_SCRIPT = "compile_edgetpu.sh"


class EdgeTpuProxyPredictor(TflitePredictor):
    """The full-integer model on LiteRT CPU kernels, standing in for the Edge TPU (numerics only)."""

    proxy_for = "LiteRT CPU on the full-integer model (proxy for Edge TPU numerics; no latency)"


def constant_bytes(path: Path) -> int:
    """Bytes of constant tensor data (weights, biases) in a .tflite file's main subgraph."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(path.read_bytes(), 0)
    graph = model.Subgraphs(0)
    seen: set[int] = set()
    total = 0
    for index in range(graph.TensorsLength()):
        buffer_index = graph.Tensors(index).Buffer()
        if buffer_index > 0 and buffer_index not in seen:
            seen.add(buffer_index)
            total += model.Buffers(buffer_index).DataLength()
    return total


def compile_command(model: str = "model.tflite") -> list[str]:
    return [COMPILER, "--show_operations", "--out_dir", ".", model]


def parse_compiler_log(text: str) -> dict[str, int]:
    """Op counts from an ``edgetpu_compiler`` log ("Number of operations that will run on Edge TPU: N")."""
    counts = {}
    for key, label in (("tpu_ops", "Edge TPU"), ("cpu_ops", "CPU")):
        match = re.search(rf"Number of operations that will run on {label}:\s*(\d+)", text)
        if match:
            counts[key] = int(match.group(1))
    return counts


class EdgeTpuExporter(TfliteExporter):
    """coral-edgetpu: full-integer TFLite, compiled for the Edge TPU where the compiler exists."""

    runtime = "edgetpu"
    capabilities = Capabilities(
        op_vocabulary="tflite",
        graph_formats=frozenset({"tflite-edgetpu"}),  # the full-integer model the compiler maps, read as TFLite
        device_build_script=COMPILE_SCRIPT,
        isolation="worker process",
        optional_tools=((COMPILER, "compiles the Edge TPU model during export (otherwise the bundle's "
                                   "compile_edgetpu.sh runs it on an x86-64 Linux host)"),),
    )
    artifact_formats = {"tflite-edgetpu": ".tflite"}
    embeds_contract_in_export = False  # embedded below, once the artifact (format, toolchain) is final

    def supports(self, recipe: Recipe) -> str | None:
        if recipe.precision != "int8" or recipe.quantization.io == "float":
            return "the Edge TPU runs full-integer models only: an int8 recipe with int8/uint8 I/O (int8-full)"
        return super().supports(recipe)

    def export(
        self, source: ModelSource, profile: TargetProfile, recipe: Recipe, calib: Dataset | None, workdir: Path
    ) -> Artifact:
        if not all(spec.is_static for spec in source.inputs) and profile.dynamic_shapes:
            raise ExportError("the Edge TPU needs static shapes; the profile must set dynamic_shapes = false")
        artifact = super().export(source, profile, recipe, calib, workdir)
        parameters = constant_bytes(artifact.path)
        script = artifact.path.with_name(COMPILE_SCRIPT)
        script.write_text(
            "#!/bin/sh\n# Compiles the full-integer model for the Coral Edge TPU (edgetpu_compiler from Coral's apt repo).\n"
            f'set -eu\ncd "$(dirname "$0")"\n{shlex.join(compile_command())}\n'
        )
        script.chmod(0o755)
        settings = {
            **artifact.settings,
            "parameter_bytes": parameters,
            "parameter_cache_bytes": PARAMETER_CACHE_BYTES,
            "parameters_fit_on_chip": parameters <= PARAMETER_CACHE_BYTES,
            "compile_command": shlex.join(compile_command()),
        }
        files = [*artifact.files, script]
        if shutil.which(COMPILER):
            files, settings = self._compile(artifact.path, files, settings)
        else:
            settings["compiled"] = f"not here ({COMPILER} not on PATH): run compile_edgetpu.sh where it is installed"
        artifact = replace(artifact, files=tuple(files), format="tflite-edgetpu", settings=settings,
                           toolchain={**artifact.toolchain, COMPILER: settings.get("compiler_version", "not installed")})
        self.embed_contract(artifact, Contract.for_artifact(source, artifact))
        return artifact

    def _compile(self, model: Path, files: list[Path], settings: dict) -> tuple[list[Path], dict]:
        completed = subprocess.run(compile_command(model.name), cwd=model.parent, capture_output=True, text=True,
                                   timeout=600, check=False)
        log = model.with_name("model_edgetpu.log")
        log.write_text(completed.stdout + completed.stderr)
        if completed.returncode != 0:
            raise ExportError(f"{COMPILER} failed: {(completed.stderr or completed.stdout).strip().splitlines()[-1:]}")
        compiled = model.with_name("model_edgetpu.tflite")
        version = re.search(r"Edge TPU Compiler version ([\d.]+)", completed.stdout)
        return [*files, compiled, log], {**settings, **parse_compiler_log(completed.stdout), "compiled": "yes",
                                         "compiler_version": version.group(1) if version else "unknown"}

    def predictor(self, artifact: Artifact, source: ModelSource) -> Predictor | NotRunnable:
        base = super().predictor(artifact, source)
        if isinstance(base, NotRunnable):
            return base
        base.close()
        return EdgeTpuProxyPredictor(artifact.path, artifact.settings, threads=self.threads)
