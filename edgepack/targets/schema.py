"""Pydantic schema of a target profile (``edgepack/targets/profiles/<id>.toml``).

A profile holds facts that are true of a device: its runtime and artifact format, its accelerators
with their precisions and supported-op tables (in the vocabulary the placement check runs on), memory,
published peak TOPS, toolchain version pins, and the *names* of the recipes it prefers (recipe contents
live in ``edgepack/compress/recipes``). Unknown keys are rejected.
"""

from __future__ import annotations

import re
from typing import Literal

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from pydantic import Field, field_validator, model_validator

from edgepack._schema import StrictModel

Precision = Literal["fp32", "fp16", "bf16", "int16", "int8", "int4", "uint8", "a16w8", "int8-dynamic"]
OpVocabulary = Literal["onnx", "tflite", "mil", "openvino"]
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


class Accelerator(StrictModel):
    """One compute unit of a device (CPU, GPU, NPU, DLA, DSP, TPU)."""

    kind: AcceleratorKind
    description: str = ""
    precisions: list[Precision] = Field(min_length=1)
    op_vocabulary: OpVocabulary
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
