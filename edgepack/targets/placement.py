"""Static placement check: which graph ops each accelerator of a profile can take, and why not.

Each non-CPU accelerator is checked on its own (a delegate is chosen per run): for every op of the
graph, in graph order, the accelerator's op table (in the profile's vocabulary: ONNX op types or
TFLite builtin names) and its constraints decide; ops it cannot take fall back to the CPU with the
reason. ``first_fallback_index`` is where a single-partition accelerator (Edge TPU) would stop.
The graph itself is read by the exporter that declares the artifact's format and the profile's vocabulary
(:meth:`edgepack.exporters.base.Exporter.graph_ops`); this module never opens a model file.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgepack.targets.schema import Accelerator, OpConstraint, TargetProfile

RECIPE_TO_ACCELERATOR_PRECISION = {"int4-weight": "int4", "mixed": "int8"}
_DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
_FLOATS = ("fp32", "fp16", "bf16")


def canonical_dtype(dtype: str) -> str:
    """One spelling for dtypes across graphs and profiles (``float32`` -> ``fp32``)."""
    return _DTYPE_ALIASES.get(dtype, dtype)


def _execution_dtypes(op: GraphOp, precision: str, table_dtypes: str = "execution") -> set[str]:
    """Float tensors execute in the artifact's precision (TensorRT --fp16, QDQ int8), the rest as stored.

    Tables written in graph tensor types (``op_dtypes = "graph"``) see int8 as Q/DQ around float ops, so an
    int8 artifact's float tensors are judged as stored there."""
    dtypes = {canonical_dtype(d) for d in op.dtypes}
    quantized = precision in ("int8", "uint8")
    if precision in _FLOATS or (quantized and table_dtypes == "execution"):
        dtypes = {precision if d in _FLOATS else d for d in dtypes}
    return dtypes


@dataclass(frozen=True)
class GraphOp:
    """One op of a graph with the facts the constraints look at (``None`` = unknown)."""

    name: str
    op_type: str
    dtypes: tuple[str, ...] = ()
    rank: int | None = None
    static: bool = True
    kernel: int | None = None
    stride: int | None = None
    dilation: int | None = None
    channels: int | None = None
    version: int | None = None
    placed_on: str | None = None
    """The accelerator the runtime itself put the op on, when the artifact records it (a delegate's partitioner
    decided at export): placement then reports that decision instead of judging the op table."""
    placement_reason: str | None = None
    """Why the runtime left the op off an accelerator (its partitioner's own words), with :attr:`placed_on`."""


@dataclass
class AcceleratorPlacement:
    """How much of the graph one accelerator takes."""

    accelerator: str
    kind: str
    supported: int = 0
    fallback: list[dict[str, str]] = field(default_factory=list)
    first_fallback_index: int | None = None
    partition: str = "per-op"

    @property
    def fallback_fraction(self) -> float:
        """Share of ops this accelerator does not run (for ``prefix`` partitioning: everything from the
        first unsupported op on)."""
        total = self.supported + len(self.fallback)
        if not total:
            return 0.0
        if self.partition == "prefix" and self.first_fallback_index is not None:
            return (total - self.first_fallback_index) / total
        return len(self.fallback) / total


@dataclass
class PlacementReport:
    """Per-accelerator placement of ``total_ops`` ops, checked in ``vocabulary``."""

    profile: str
    vocabulary: str
    total_ops: int
    op_counts: dict[str, int]
    accelerators: list[AcceleratorPlacement]
    checked_on: str

    @property
    def cpu_fallback_fraction(self) -> float:
        """Share of ops left to the CPU with the best accelerator doing all it can (one delegate at a time)."""
        return min((a.fallback_fraction for a in self.accelerators), default=0.0)

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        for entry, placement in zip(data["accelerators"], self.accelerators):
            entry["fallback_fraction"] = round(placement.fallback_fraction, 4)
        data["cpu_fallback_fraction"] = round(self.cpu_fallback_fraction, 4)
        return data


def _violations(op: GraphOp, rule: OpConstraint, precision: str, table_dtypes: str = "execution") -> list[str]:
    dtypes = _execution_dtypes(op, precision, table_dtypes)
    allowed = {canonical_dtype(d) for d in rule.dtypes or ()}
    checks = [
        (rule.dtypes is not None and bool(dtypes) and not dtypes <= allowed,
         f"dtypes {sorted(dtypes)} not in {sorted(allowed)}"),
        (rule.max_rank is not None and op.rank is not None and op.rank > rule.max_rank, f"rank {op.rank} > {rule.max_rank}"),
        (rule.static_shapes and not op.static, "needs static shapes"),
        (rule.max_kernel is not None and op.kernel is not None and op.kernel > rule.max_kernel,
         f"kernel {op.kernel} > {rule.max_kernel}"),
        (rule.max_stride is not None and op.stride is not None and op.stride > rule.max_stride,
         f"stride {op.stride} > {rule.max_stride}"),
        (rule.max_dilation is not None and op.dilation is not None and op.dilation > rule.max_dilation,
         f"dilation {op.dilation} > {rule.max_dilation}"),
        (rule.max_channels is not None and op.channels is not None and op.channels > rule.max_channels,
         f"channels {op.channels} > {rule.max_channels}"),
        (rule.versions is not None and op.version is not None and op.version not in rule.versions,
         f"op version {op.version} not in {rule.versions}"),
    ]
    return [message for failed, message in checks if failed]


def _place_one(name: str, accelerator: Accelerator, ops: list[GraphOp], precision: str | None) -> AcceleratorPlacement:
    placement = AcceleratorPlacement(name, accelerator.kind, partition=accelerator.partition)
    # precision None: judge op support only, each accelerator in its own preferred precision
    wanted = accelerator.precisions[0] if precision is None else RECIPE_TO_ACCELERATOR_PRECISION.get(precision, precision)
    precision_reason = None
    if wanted not in accelerator.precisions:
        precision_reason = f"{name} runs {', '.join(accelerator.precisions)}; the artifact is {precision}"
    for index, op in enumerate(ops):
        rule = accelerator.ops.get(op.op_type)
        if op.placed_on is not None:
            reason = "" if op.placed_on == name else (op.placement_reason or f"the runtime placed it on {op.placed_on}")
        elif precision_reason:
            reason = precision_reason
        elif rule is None:
            reason = f"{op.op_type} is not in the {name} op table"
        else:
            problems = _violations(op, rule, wanted, accelerator.op_dtypes)
            reason = "; ".join(problems) if problems else ""
        if reason:
            placement.fallback.append({"op": op.name, "type": op.op_type, "reason": reason})
            if placement.first_fallback_index is None:
                placement.first_fallback_index = index
        else:
            placement.supported += 1
    return placement


def place(ops: list[GraphOp], profile: TargetProfile, precision: str | None, checked_on: str) -> PlacementReport:
    """Check ``ops`` against every accelerator of ``profile`` that has an op table, for an artifact of
    ``precision`` (``None``: op support only, each accelerator in its preferred precision)."""
    vocabularies = {acc.op_vocabulary for acc in profile.accelerators.values()}
    placements = [
        _place_one(name, acc, ops, precision) for name, acc in profile.accelerators.items() if not acc.all_ops
    ]
    return PlacementReport(
        profile=profile.id,
        vocabulary="/".join(sorted(vocabularies)),
        total_ops=len(ops),
        op_counts=dict(Counter(op.op_type for op in ops)),
        accelerators=placements,
        checked_on=checked_on,
    )


def placement_for(
    profile: TargetProfile, precision: str | None, artifact_path: Path, artifact_format: str, hub: Path | None
) -> PlacementReport | None:
    """Placement of an exported artifact on ``profile``; ``None`` when the profile has no op tables or the
    graph cannot be read in the profile's vocabulary.

    The graph is read by an exporter whose :attr:`~edgepack.exporters.base.Capabilities.graph_formats` hold the
    artifact's format in that vocabulary; when none does (an artifact converted from the hub, e.g. OpenVINO IR
    on an ONNX-vocabulary profile), the ONNX hub file ``hub`` is read instead, if the vocabulary is its own."""
    from edgepack.exporters.onnx.hub import HUB_FORMAT
    from edgepack.exporters.registry import graph_reader

    checked = [acc for acc in profile.accelerators.values() if not acc.all_ops]
    if not checked:
        return None
    vocabulary = checked[0].op_vocabulary
    for path, fmt in ((artifact_path, artifact_format), (hub, HUB_FORMAT)):
        reader = graph_reader(fmt, vocabulary) if path is not None else None
        if reader is not None:
            return place(reader.graph_ops(path, fmt), profile, precision, checked_on=path.name)
    return None
