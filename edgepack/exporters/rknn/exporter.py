"""RKNN exporter: the ONNX hub model compiled to ``.rknn`` for a Rockchip NPU by RKNN-Toolkit2 (own venv).

fp16 is the toolkit's build without quantization (the NPU computes float in fp16); int8 is its ``w8a8``
post-training quantization calibrated on edgepack's data (``normal`` = min-max, ``kl_divergence`` = entropy,
``mmse`` = MSE ranges; per-channel or per-layer weights). Parity and the gate run on the toolkit's x86 simulator
in the session that built the model (:mod:`edgepack.exporters.rknn.session`): numerics of the NPU's
quantization, no latency. The ``.rknn`` has no metadata slot, so the contract travels as ``model.contract.json``.
The compiler's SoC is the profile's ``family`` (``rk3588``, ``rk3576``, ...). On a board with
``rknn_toolkit_lite2`` installed, the predictor runs the ``.rknn`` on the NPU (the SSH runner's agent uses it);
that path has not run on hardware in this project's CI.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.compress.quantize import plan
from edgepack.compress.recipe import Recipe
from edgepack.contract.metadata import Contract
from edgepack.data.dataset import Dataset
from edgepack.errors import UnsupportedError
from edgepack.exporters.base import Artifact, Capabilities, Exporter, NotRunnable, Predictor
from edgepack.exporters.rknn.env import RKNN_ENV, TOOLKIT
from edgepack.exporters.rknn.predictor import RknnLitePredictor, RknnSimulatorPredictor
from edgepack.exporters.rknn.session import BUILD_TIMEOUT_S, open_session, session_for
from edgepack.models.source import ModelSource
from edgepack.targets.schema import TargetProfile

FORMAT = "rknn"
CONTRACT_FILE = "model.contract.json"
PRECISIONS = ("fp16", "int8")
ALGORITHMS = {"minmax": "normal", "entropy": "kl_divergence", "mse": "mmse"}
"""edgepack calibration method -> RKNN ``quantized_algorithm``."""
PLATFORMS = ("rk3588", "rk3576", "rk3568", "rk3566", "rk3562", "rv1103", "rv1106", "rv1103b", "rv1106b", "rk2118")
"""``target_platform`` values RKNN-Toolkit2 2.x compiles for."""


def _calibration_list(plan_batches: Any, source: ModelSource, folder: Path) -> tuple[Path, int]:
    """RKNN's dataset file: one line per sample, the ``.npy`` file of each input (in input order) on it."""
    folder.mkdir(parents=True, exist_ok=True)
    lines, count = [], 0
    for batch in plan_batches:
        size = len(next(iter(batch.values())))
        for index in range(size):
            paths = []
            for position, spec in enumerate(source.inputs):
                path = folder / f"{count:05d}_{position}.npy"
                np.save(path, np.ascontiguousarray(np.asarray(batch[spec.name])[index : index + 1]))
                paths.append(str(path))
            lines.append(" ".join(paths))
            count += 1
    dataset = folder / "dataset.txt"
    dataset.write_text("\n".join(lines) + "\n")
    return dataset, count


class RknnExporter(Exporter):
    """Rockchip NPUs: ``.rknn`` from the ONNX hub by RKNN-Toolkit2 in its own venv, parity on its simulator."""

    runtime = "rknn"
    capabilities = Capabilities(isolation="own venv", isolated_env=RKNN_ENV)
    distributions = ("onnx", "torch")
    artifact_formats = {FORMAT: ".rknn"}

    def supports(self, recipe: Recipe) -> str | None:
        if recipe.precision not in PRECISIONS:
            return (f"precision '{recipe.precision}' is not offered: Rockchip NPUs compute in fp16 (the toolkit's "
                    "float build) or int8")
        if recipe.precision != "int8":
            return None
        q = recipe.quantization
        if q.io != "float":
            return "integer model I/O is not implemented for rknn (the runtime quantizes float inputs itself)"
        if q.activations != "int8":
            return f"{q.activations} activations are not implemented for rknn (w8a8 only)"
        if recipe.calibration.method not in ALGORITHMS:
            return f"calibration method '{recipe.calibration.method}' is not offered (use {', '.join(ALGORITHMS)})"
        if recipe.exclude:
            return "per-layer float exclusions (RKNN hybrid quantization) are not implemented"
        return None

    def export(
        self, source: ModelSource, profile: TargetProfile, recipe: Recipe, calib: Dataset | None, workdir: Path
    ) -> Artifact:
        self.require_support(recipe)
        if profile.family not in PLATFORMS:
            raise UnsupportedError(f"{profile.id}: family '{profile.family}' is not an RKNN target platform "
                                   f"({', '.join(PLATFORMS)})")
        from edgepack.exporters.onnx.hub import export_onnx

        quantization = plan(recipe, calib) if recipe.precision == "int8" else None
        hub = export_onnx(source, workdir.parent / "_onnx_static", dynamic=False).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        model = (workdir / "model.rknn").resolve()
        config: dict[str, Any] = {"target_platform": profile.family, "optimization_level": 3}
        settings: dict[str, Any] = {"target_platform": profile.family, "dynamic_shapes": False,
                                    "simulator": "RKNN-Toolkit2 x86 simulator (numerics of the NPU, no latency)"}
        dataset = None
        scratch = workdir / "_calibration"
        if quantization is not None:
            config |= {"quantized_dtype": "w8a8", "quantized_algorithm": ALGORITHMS[recipe.calibration.method],
                       "quantized_method": "channel" if recipe.quantization.per_channel else "layer"}
            dataset, samples = _calibration_list(quantization.calibration_batches(), source, scratch)
            settings |= {"quantization": "w8a8 (int8 weights and activations, asymmetric per-tensor activations)",
                         "quantized_algorithm": config["quantized_algorithm"],
                         "quantized_method": config["quantized_method"], "calibration": recipe.calibration.method,
                         "calibration_samples": samples}
        else:
            settings["quantization"] = "none (fp16 on the NPU)"
        session = open_session(model, workdir / "_toolkit")
        reply = session.request({
            "op": "build", "onnx": str(hub), "inputs": [spec.name for spec in source.inputs],
            "input_size_list": [list(spec.concrete_shape(1)) for spec in source.inputs], "config": config,
            "quantize": quantization is not None, "dataset": str(dataset) if dataset else None, "output": str(model),
        }, BUILD_TIMEOUT_S)
        shutil.rmtree(scratch, ignore_errors=True)
        notes = ()
        if quantization is not None and recipe.quantization.symmetric_activations:
            notes = ("activations are quantized asymmetrically per tensor (w8a8); the recipe's symmetric ranges do "
                     "not apply",)
        artifact = Artifact(
            target_id=profile.id, runtime=self.runtime, path=model, files=(model, model.with_name(CONTRACT_FILE)),
            format=FORMAT, precision=recipe.precision, recipe=recipe.name,
            inputs=tuple(spec.with_static_shape() for spec in source.inputs),
            outputs=tuple(spec.with_static_shape() for spec in source.outputs),
            toolchain={**self.toolchain().versions, TOOLKIT: reply["toolkit"]},
            converter=f"RKNN-Toolkit2 {reply['toolkit']} (load_onnx, build, export_rknn)", settings=settings,
            notes=notes,
        )
        self.embed_contract(artifact, Contract.for_artifact(source, artifact))
        return artifact

    def embed_contract(self, artifact: Artifact, contract: Contract) -> None:
        artifact.path.with_name(CONTRACT_FILE).write_text(contract.to_json() + "\n", encoding="utf-8")

    def predictor(self, artifact: Artifact, source: ModelSource) -> Predictor | NotRunnable:
        """The simulator session that built the artifact (export time); on a board with ``rknn_toolkit_lite2``
        (the SSH runner's agent), the NPU itself; else not runnable here."""
        session = session_for(artifact.path)
        if session is not None:
            return RknnSimulatorPredictor(session, artifact)
        if importlib.util.find_spec("rknnlite") is not None:
            return RknnLitePredictor(artifact)
        return NotRunnable("the RKNN-Toolkit2 simulator runs only a model it built in the same session, and "
                           "rknn_toolkit_lite2 (the board's runtime) is not installed here; export again to check "
                           "it here, or bench it on a board (edgepack bench --runner ssh://BOARD)")
