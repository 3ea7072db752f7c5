"""Pydantic schema of a target profile (``edgepack/targets/profiles/<id>.toml``).

A profile holds facts that are true of a device: its runtime and artifact format, its accelerators
with their precisions and supported-op tables (in the vocabulary the placement check runs on), memory,
published peak TOPS, toolchain version pins, and the *names* of the recipes it prefers (recipe contents
live in ``edgepack/compress/recipes``). Each accelerator also carries the runtime facts runners and
generated apps need to select it (``litert_delegate``, ``coreml_compute_units``), so a new device with a new
accelerator is one TOML file. Unknown keys are rejected.
"""

from __future__ import annotations

import re
from typing import Literal

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from pydantic import Field, field_validator, model_validator

from edgepack._schema import StrictModel

Precision = Literal["fp32", "fp16", "bf16", "int16", "int8", "int4", "uint8", "a16w8", "int8-dynamic"]


AcceleratorKind = Literal["cpu", "gpu", "npu", "dla", "dsp", "tpu"]

_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")


class OpConstraint(StrictModel):
    """What an accelerator requires of one op to run it (all fields optional)."""

    dtypes: list[str] | None = None
    max_rank: int | None = Field(default=None, ge=0)
    static_shapes: bool = False
    max_kernel: int | None = Field(default=None, ge=1)
    max_stride: int | None = Field(default=None, ge=1)
    max_dilation: int | None = Field(default=None, ge=1)
    max_channels: int | None = Field(default=None, ge=1)
    versions: list[int] | None = None
    note: str | None = None


_FLAG = re.compile(r"^--[A-Za-z0-9_]+=\S+$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_KOTLIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+$")
_MAVEN = re.compile(r"^[A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+$")
BENCHMARK_PLACEHOLDERS = ("lib_dir",)
"""What ``benchmark_flags`` may interpolate: ``{lib_dir}``, the phone's delegate-library folder."""
CoreMLComputeUnits = Literal["all", "cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine"]
"""The cases of Core ML's ``MLComputeUnits``."""


class LiteRTDelegate(StrictModel):
    """How LiteRT runs a model on one accelerator: the ``benchmark_model`` flags (the ``adb://`` runner) and,
    where the delegate ships on Maven, how generated Kotlin creates it (``edgepack package --platform android``).
    ``[accelerators.<id>.litert_delegate]`` in a profile."""

    benchmark_flags: list[str] = Field(min_length=1)
    """benchmark_model flags selecting the delegate (``--use_gpu=true``); ``{lib_dir}`` is replaced by the
    phone's delegate-library folder (the adb runner's ``lib_dir`` option)."""
    reported_as: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    """The name benchmark_model prints in "Explicitly applied <NAME> delegate" (``EXTERNAL`` for a delegate
    loaded with ``--external_delegate_path``)."""
    kotlin_create: str | None = None
    """A Kotlin expression of type ``org.tensorflow.lite.Delegate`` (``GpuDelegate()``). Unset: generated
    apps run this accelerator's share of the graph on the CPU path (XNNPACK) and say why."""
    kotlin_imports: list[str] = Field(default_factory=list)
    """Fully qualified Kotlin names ``kotlin_create`` needs."""
    maven: list[str] = Field(default_factory=list)
    """Extra Maven artifacts (``group:name``) beside ``com.google.ai.edge.litert:litert``, pinned to the same
    version."""

    @field_validator("benchmark_flags")
    @classmethod
    def _check_flags(cls, value: list[str]) -> list[str]:
        for flag in value:
            if not _FLAG.match(flag):
                raise ValueError(f"{flag!r} is not one '--name=value' benchmark_model flag")
            unknown = [p for p in _PLACEHOLDER.findall(flag) if p not in BENCHMARK_PLACEHOLDERS]
            if unknown or flag.count("{") != flag.count("}"):
                raise ValueError(f"{flag!r}: the only placeholder is {{lib_dir}}")
        return value

    @model_validator(mode="after")
    def _check_kotlin(self) -> "LiteRTDelegate":
        if self.kotlin_create is None and (self.kotlin_imports or self.maven):
            raise ValueError("kotlin_imports and maven need kotlin_create")
        if self.kotlin_create is not None and (not self.kotlin_create.strip() or "\n" in self.kotlin_create):
            raise ValueError("kotlin_create: one Kotlin expression on one line")
        for name in self.kotlin_imports:
            if not _KOTLIN_NAME.match(name):
                raise ValueError(f"kotlin_imports: {name!r} is not a fully qualified Kotlin name")
        for coordinate in self.maven:
            if not _MAVEN.match(coordinate):
                raise ValueError(f"maven: {coordinate!r} is not 'group:name' (the version is LiteRT's)")
        return self

    @property
    def needs_lib_dir(self) -> bool:
        """Whether the flags load libraries from the phone's delegate-library folder."""
        return any("{lib_dir}" in flag for flag in self.benchmark_flags)

    def flags(self, lib_dir: str) -> tuple[str, ...]:
        """``benchmark_flags`` with ``{lib_dir}`` filled in."""
        return tuple(flag.replace("{lib_dir}", lib_dir) for flag in self.benchmark_flags)


class Accelerator(StrictModel):
    """One compute unit of a device (CPU, GPU, NPU, DLA, DSP, TPU)."""

    kind: AcceleratorKind
    description: str = ""
    precisions: list[Precision] = Field(min_length=1)
    op_vocabulary: str
    """The op vocabulary its ``ops`` are named in: one an installed exporter declares (checked by
    :func:`edgepack.targets.registry.load_registry`, which knows the exporters; this model does not)."""
    all_ops: bool = False
    """True for a unit that runs every op of its runtime (the CPU fallback)."""
    ops: dict[str, OpConstraint] = Field(default_factory=dict)
    op_dtypes: Literal["execution", "graph"] = "execution"
    """What the op table's ``dtypes`` mean: the precision an op executes in (``execution``: float tensors of
    an int8 artifact are judged as int8), or the graph's tensor types as the vendor's parser reads them
    (``graph``: int8 arrives as explicit Q/DQ around float-typed ops, as in ONNX-TensorRT's matrix)."""
    partition: Literal["per-op", "prefix"] = "per-op"
    """How the runtime splits a graph: ``per-op`` (every supported op runs here, the rest elsewhere) or
    ``prefix`` (the Edge TPU compiler maps ops up to the first unsupported one; the whole tail runs on the CPU)."""
    source: str | None = None
    """Key into :attr:`TargetProfile.sources` naming where the op table was taken from."""
    litert_delegate: LiteRTDelegate | None = None
    """LiteRT profiles: the delegate that runs this accelerator (benchmark flags, Kotlin construction)."""
    coreml_compute_units: CoreMLComputeUnits | None = None
    """Core ML profiles: the ``MLComputeUnits`` that select this accelerator."""

    @model_validator(mode="after")
    def _ops_or_all(self) -> "Accelerator":
        if not self.all_ops and not self.ops:
            raise ValueError("an accelerator needs either all_ops = true or an ops table")
        return self


class Source(StrictModel):
    """A public document a profile's facts were taken from."""

    title: str
    url: str
    retrieved: str | None = None


class TargetProfile(StrictModel):
    """A device profile: runtime, accelerators, memory, recipes, toolchain pins."""

    id: str
    name: str
    family: str
    runtime: str
    format: str
    description: str = ""
    accelerators: dict[str, Accelerator] = Field(min_length=1)
    memory_mb: int = Field(gt=0)
    peak_tops: dict[Precision, float] = Field(default_factory=dict)
    dynamic_shapes: bool = True
    """Whether the runtime accepts dynamic (symbolic) dims such as a free batch size."""
    input_layout: Literal["NCHW", "NHWC"] = "NCHW"
    latency_gate: Literal["host", "device"] = "device"
    """``host``: this machine is the target, so the gate rejects artifacts slower than fp32 here. ``device``: host
    timings say nothing about the device (x86 vs an Arm phone, a GPU, an NPU); they are recorded, not enforced."""
    recipes: list[str] = Field(min_length=1)
    toolchain: dict[str, str] = Field(default_factory=dict)
    sources: dict[str, Source] = Field(default_factory=dict)
    extends: str | None = None
    notes: list[str] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not _ID_PATTERN.match(value):
            raise ValueError("must be lower-case letters, digits and '-' (2-63 characters)")
        return value

    @field_validator("toolchain")
    @classmethod
    def _check_pins(cls, value: dict[str, str]) -> dict[str, str]:
        for tool, spec in value.items():
            try:
                SpecifierSet(spec)
            except InvalidSpecifier:
                raise ValueError(f"{tool}: {spec!r} is not a version specifier like '>=10.3,<11'") from None
        return value

    @model_validator(mode="after")
    def _check_references(self) -> "TargetProfile":
        if len(set(self.recipes)) != len(self.recipes):
            raise ValueError("recipes: names must be unique")
        for acc_name, acc in self.accelerators.items():
            if acc.source is not None and acc.source not in self.sources:
                raise ValueError(f"accelerators.{acc_name}.source: {acc.source!r} is not a key of [sources]")
        return self

    @property
    def precisions(self) -> list[str]:
        """All precisions any accelerator of the device runs, in first-seen order."""
        seen: list[str] = []
        for acc in self.accelerators.values():
            seen.extend(p for p in acc.precisions if p not in seen)
        return seen
