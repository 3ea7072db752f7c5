"""Core ML exporter (iphone-15-pro, mac-apple-silicon): an mlprogram ``.mlpackage`` for the profile's minimum OS.

Conversion (``coreml_convert``): ``torch.jit.trace`` then ``torch.export``, fp16 compute (fp32 for the fp32
recipe), float32 model I/O, the deployment target from the profile's ``ios``/``macos`` toolchain pin.
Compression (``coreml_compress``): palettization, sparsity and int8 weights with ``coremltools.optimize.coreml``;
W8A8 (``coreml_w8a8``): int8 activations calibrated on the user's data, iOS 17 / macOS 14 and later.
ONNX sources (coremltools has no ONNX frontend) first become a torch module with ``onnx2torch``
(:mod:`edgepack.models.onnx_to_torch`: normalised, then checked against ONNX Runtime) and are converted with
static input shapes, the ones the ONNX graph was fixed to.

Core ML ``predict`` exists only on macOS/iOS, so nothing is run here: the predictor is :class:`NotRunnable`
and the manifest states that parity and accuracy are not measurable on this host. The artifact is
``model.mlpackage`` (a directory: the artifact's ``path``, hashed over its files) plus ``coreml.json`` beside
it with the spec's hash and the static check's findings. The artifact is checked statically (``coreml_ane``):
the spec loads with coremltools, its I/O names match the source, its opset is the deployment target's, and the
requested compression shows up as constexpr (or activation quantize) ops in the MIL.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

from edgepack.compress.recipe import Recipe
from edgepack.contract.metadata import Contract
from edgepack.data.dataset import Dataset
from edgepack.errors import ExportError, ProfileError, UnsupportedError
from edgepack.exporters.base import Artifact, Capabilities, Exporter, NotRunnable, Packaging, Predictor
from edgepack.exporters.coreml.graph import (
    DESCRIPTOR,
    PACKAGE,
    compute_plan_counts,
    import_coremltools,
    mil_graph_ops,
    spec_path,
)
from edgepack.hashing import file_sha256
from edgepack.models.onnx_to_torch import TorchFromOnnx
from edgepack.models.source import ModelSource, TensorSpec
from edgepack.targets.placement import GraphOp
from edgepack.targets.schema import TargetProfile

COMPUTE_PRECISION = {"fp32": "fp32", "fp16": "fp16", "int8-dynamic": "fp16", "int8": "fp16"}
"""Recipe precision -> Core ML float compute precision: weight-only int8 is decompressed to fp16; W8A8 (int8)
wraps int8 activations in quantize/dequantize pairs around fp16 ops (conv/linear/matmul get int8-int8 compute on
A17 Pro / M4 Neural Engines)."""
W8A8_MINIMUM_IOS = 17
OS_PINS = {"ios": ("iOS", 0), "macos": ("macOS", 3)}
"""Profile toolchain key -> (coremltools target prefix, offset to the iOS version of the same opset)."""
NOT_RUNNABLE = ("Core ML predict runs only on macOS/iOS: parity and accuracy are not measurable here "
                "(the artifact was checked statically with coremltools)")


def deployment_target(profile: TargetProfile) -> tuple[Any, str, int]:
    """``(coremltools.target member, its name, iOS-equivalent major)`` from the profile's ``ios``/``macos`` pin."""
    ct = import_coremltools()
    from packaging.specifiers import SpecifierSet

    for key, (prefix, offset) in OS_PINS.items():
        pin = profile.toolchain.get(key)
        if pin is None:
            continue
        lower = [s.version for s in SpecifierSet(pin) if s.operator in (">=", "==", "~=")]
        if not lower:
            break
        major = int(lower[0].split(".")[0])
        name = f"{prefix}{major}"
        if not hasattr(ct.target, name):
            raise ProfileError(f"{profile.id}: toolchain.{key} = {pin!r}: coremltools has no deployment target {name}")
        return getattr(ct.target, name), name, major + offset
    raise ProfileError(
        f"{profile.id}: a Core ML profile needs a toolchain pin 'ios' or 'macos' (e.g. ios = \">=17.0\")")


def _static_check(package: Path, source: ModelSource, opset_major: int, planned: list[str]) -> dict[str, Any]:
    """Load the spec with coremltools and check I/O, opset and compression; raise ExportError on a mismatch."""
    ct = import_coremltools()

    from edgepack.exporters.coreml.graph import compression_ops, deployment_opset, io_description

    ct.models.MLModel(str(package), skip_model_load=True)
    io = io_description(package)
    for kind, specs in (("inputs", source.inputs), ("outputs", source.outputs)):
        names = [entry["name"] for entry in io[kind]]
        if names != [coreml_name(spec.name) for spec in specs]:
            raise ExportError(f"Core ML {kind} {names} do not match the source's {[s.name for s in specs]}")
        for entry, spec in zip(io[kind], specs):
            dtype = "float32" if spec.dtype.startswith("float") else "int32"
            if entry["dtype"] != dtype:
                raise ExportError(f"Core ML {kind[:-1]} {spec.name} is {entry['dtype']}, expected {dtype}")
            if kind == "inputs" and entry["shape"] != list(spec.concrete_shape(1)):
                raise ExportError(f"Core ML input {spec.name} has shape {entry['shape']}, "
                                  f"expected {list(spec.concrete_shape(1))}")
    opset = deployment_opset(package)
    if opset != f"CoreML{opset_major - 10}":
        raise ExportError(f"Core ML program opset {opset} is not the deployment target's (iOS {opset_major})")
    compressed = compression_ops(package)
    expected = {"palettize": "palettized", "prune": "sparse", "linear_int8": "linear_quantized",
                "w8a8": "activation_quantized"}
    missing = [name for name in planned if not compressed.get(expected[name])]
    if missing:
        raise ExportError(f"Core ML compression {missing} was requested but left no constexpr ops in the program")
    return {"io": io, "opset": opset, "compression_ops": compressed, "static_check": "passed"}


def coreml_name(name: str) -> str:
    """The feature name coremltools gives a source I/O name (``[A-Za-z_][A-Za-z0-9_]*``: ONNX names such as
    ``save_infer_model/scale_0.tmp_1`` become ``save_infer_model_scale_0_tmp_1``)."""
    import_coremltools()
    from coremltools.converters.mil.mil.passes.defs.preprocess import NameSanitizer

    return NameSanitizer().sanitize_name(name)


def package_sha256(package: Path) -> str:
    """One hash for a package directory: SHA-256 over its files' relative paths and SHA-256s, in path order."""
    digest = hashlib.sha256()
    for file in sorted(p for p in package.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(package).as_posix()}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class PackageArtifact(Artifact):
    """An artifact whose main ``path`` is a directory (the ``.mlpackage``); hashed with :func:`package_sha256`."""

    def sha256(self) -> str:
        return package_sha256(self.path)


def _artifact_specs(specs: list[TensorSpec], dynamic: bool) -> tuple[TensorSpec, ...]:
    """I/O as the artifact sees them: integer inputs are int32 in Core ML, names as coremltools sanitised them
    (:func:`coreml_name`); symbolic dims stay when flexible."""
    out = []
    for spec in specs:
        spec = spec if dynamic else spec.with_static_shape()
        if spec.dtype == "int64":
            spec = TensorSpec(spec.name, spec.shape, "int32", spec.layout, spec.preprocess, spec.quant)
        out.append(replace(spec, name=coreml_name(spec.name)))
    return tuple(out)


def _torch_from_onnx(source: ModelSource) -> TorchFromOnnx | None:
    """The ``onnx2torch`` module of an ONNX-only source (fixed to its input specs), else None."""
    if source.torch_module is not None or source.exported_program is not None or source.onnx_path is None:
        return None
    from edgepack.models.onnx_to_torch import onnx_to_torch

    return onnx_to_torch(source.onnx_path, source.inputs)


class CoreMlExporter(Exporter):
    """iphone-15-pro / mac-apple-silicon: Core ML mlprogram, compressed with coremltools.optimize."""

    runtime = "coreml"
    capabilities = Capabilities(
        op_vocabulary="mil",
        graph_formats=frozenset({"mlpackage"}),
        packaging=(Packaging("mlpackage", "ios", snippet=("swift/Run.swift", "snippets/run.swift.j2")),),
        templates=Path(__file__).with_name("templates"),
        device_runners=frozenset({"ios"}),
    )
    artifact_formats = {"mlpackage": ".mlpackage"}
    stored_weight_codings = frozenset({"palettize"})  # constexpr_lut_to_dense
    distributions: ClassVar[tuple[str, ...]] = ("coremltools", "torch")

    def supports(self, recipe: Recipe) -> str | None:
        quantization = recipe.quantization
        if recipe.precision == "int8" and (quantization.io != "float" or quantization.activations != "int8"):
            return "Core ML W8A8 keeps float model I/O and int8 activations (no integer I/O, no int16 activations)"
        if recipe.precision == "int8" and recipe.exclude:
            return "Core ML W8A8 quantizes every activation; per-layer exclusions are not implemented"
        if recipe.precision == "int8" and recipe.calibration.method != "minmax":
            return (f"Core ML W8A8 calibrates max-abs ranges; calibration method '{recipe.calibration.method}' "
                    "is not offered")
        if recipe.precision not in COMPUTE_PRECISION:
            return f"precision '{recipe.precision}' is not implemented for coreml"
        return None

    def export(
        self, source: ModelSource, profile: TargetProfile, recipe: Recipe, calib: Dataset | None, workdir: Path
    ) -> Artifact:
        self.require_support(recipe)
        if source.extra.get("postprocess"):
            raise UnsupportedError("--postprocess nms is not built for Core ML yet (no NMS pipeline model is "
                                   "generated); export Core ML targets without --postprocess")
        from edgepack.exporters.coreml.compress import compress, plan_compression
        from edgepack.exporters.coreml.convert import convert

        target, target_name, ios_major = deployment_target(profile)
        steps = plan_compression(recipe)
        too_new = [f"{s.name} needs iOS {s.minimum_ios}" for s in steps if s.minimum_ios > ios_major]
        if recipe.precision == "int8" and ios_major < W8A8_MINIMUM_IOS:
            too_new.append(f"W8A8 needs iOS {W8A8_MINIMUM_IOS}")
        if too_new:
            raise UnsupportedError(f"{', '.join(too_new)}; {profile.id}'s minimum deployment target is {target_name}")
        compute = COMPUTE_PRECISION[recipe.precision]
        from_onnx = _torch_from_onnx(source)
        if from_onnx is not None:
            source = replace(source, torch_module=from_onnx.module)
        converted = convert(source, target, fp16=compute == "fp16",
                            dynamic=profile.dynamic_shapes and from_onnx is None)
        model, compression = compress(converted.model, steps)
        planned = [s.name for s in steps]
        if recipe.precision == "int8":
            from edgepack.compress.quantize import plan
            from edgepack.exporters.coreml.w8a8 import quantize_w8a8

            quantization = plan(recipe, calib)
            model = quantize_w8a8(model, quantization.calibration_batches())
            planned += ["w8a8", "linear_int8"]
            compression |= {"activations": "int8 symmetric per tensor, ranges calibrated on the calibration data "
                                           "(MIL program evaluated with torch ops)",
                            "weights": "int8 linear, symmetric, per output channel",
                            "calibration_samples": recipe.calibration.samples}
        workdir.mkdir(parents=True, exist_ok=True)
        package = workdir / PACKAGE
        staging = workdir / ".staging" / package.name
        shutil.rmtree(staging.parent, ignore_errors=True)
        shutil.rmtree(package, ignore_errors=True)
        model.save(str(staging))
        staging.rename(package)
        staging.parent.rmdir()
        inputs = _artifact_specs(source.inputs, converted.dynamic)
        outputs = _artifact_specs(source.outputs, converted.dynamic)
        if from_onnx is not None:  # symbolic ONNX output dims, concrete for the fixed inputs
            outputs = tuple(replace(spec, shape=shape) for spec, shape in zip(outputs, from_onnx.output_shapes))
        toolchain = self.toolchain().versions
        if from_onnx is not None:
            toolchain = {**toolchain, "onnx2torch": metadata.version("onnx2torch")}
        # Before the static check and the descriptor's spec hash: the spec is final from here on.
        self._embed(package, Contract.build(source, target=profile.id, recipe=recipe.name, precision=compute,
                                            format="mlpackage", inputs=inputs, outputs=outputs, toolchain=toolchain))
        checks = _static_check(package, source, ios_major, planned)
        plan = compute_plan_counts(package)
        renamed = {spec.name: coreml_name(spec.name) for spec in (*source.inputs, *source.outputs)
                   if coreml_name(spec.name) != spec.name}
        settings: dict[str, Any] = {
            "deployment_target": target_name, "compute_precision": compute,
            "model_io": "float32 (int32 for integer inputs)",
            "conversion_failures": list(converted.failures), **compression, **checks,
            **({"onnx_to_torch": from_onnx.describe()} if from_onnx is not None else {}),
            **({"renamed_io": renamed} if renamed else {}),
            "compute_plan": plan if plan is not None else "not available (MLComputePlan needs macOS)",
            "predict": "macOS/iOS only",
        }
        descriptor = workdir / DESCRIPTOR
        descriptor.write_text(json.dumps({"package": PACKAGE, "spec_sha256": file_sha256(spec_path(package)),
                                          "recipe": recipe.name, **settings}, indent=2, sort_keys=True) + "\n")
        files = (descriptor, *sorted(p for p in package.rglob("*") if p.is_file()))
        return PackageArtifact(
            target_id=profile.id, runtime=self.runtime, path=package, files=files, format="mlpackage",
            precision=compute, recipe=recipe.name, inputs=inputs, outputs=outputs, toolchain=toolchain,
            converter=f"coremltools ({'onnx2torch + ' if from_onnx is not None else ''}{converted.converter})",
            settings=settings,
            notes=(f"Core ML mlprogram for {target_name}+; open model.mlpackage in Xcode or load it with "
                   "MLModel(contentsOf:) on the device. Parity and accuracy were not measured (no Core ML here).",),
        )

    def embed_contract(self, artifact: Artifact, contract: Contract) -> None:
        """Rewrites the package's spec; ``export()`` embeds before writing ``coreml.json`` (which records the
        spec's hash), so a later call leaves that descriptor stale."""
        self._embed(artifact.path, contract)

    @staticmethod
    def _embed(package: Path, contract: Contract) -> None:
        from edgepack.exporters.coreml.contract import write_coreml_contract

        write_coreml_contract(package, contract)

    def predictor(self, artifact: Artifact, source: ModelSource) -> Predictor | NotRunnable:
        return NotRunnable(NOT_RUNNABLE)

    def graph_ops(self, path: Path, fmt: str) -> list[GraphOp]:
        """The MIL ops of the package's spec (``path`` may be the package or the descriptor beside it)."""
        return mil_graph_ops(path)
