"""torch.export -> (PT2E int8) -> ``to_edge_transform_and_lower`` with the XNNPACK partitioner -> ``.pte``.

Besides the program bytes, lowering reports every op of the lowered program: the ops inside the XNNPACK
delegate (read from each lowered module's original graph) and the ops left to ExecuTorch's portable CPU
kernels, each with the partitioner's reason when it logged one (``WhyNoPartition``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from edgepack.compress.quantize import QuantizationPlan
from edgepack.errors import ExportError
from edgepack.exporters.executorch.predictor import quiet_import
from edgepack.exporters.executorch.program import export_program, quiet
from edgepack.models.source import ModelSource

BACKEND = "XnnpackBackend"
"""The delegate id XNNPACK-lowered subgraphs carry in the program."""
PORTABLE = "portable"
"""Where ops outside any delegate run: ExecuTorch's portable (or optimized) CPU kernels."""
_WHY_LOGGER = "executorch.backends.xnnpack.partition.config.xnnpack_config"
_SKIPPED = ("getitem", "executorch_call_delegate")


@dataclass(frozen=True)
class LoweredOp:
    """One op of the lowered program and where it runs."""

    name: str
    op_type: str
    """Edge-dialect op name (``aten.convolution.default``, ``quantized_decomposed.quantize_per_tensor.default``)."""
    dtypes: tuple[str, ...]
    rank: int | None
    runs_on: str
    """:data:`BACKEND` when delegated to XNNPACK, else :data:`PORTABLE`."""
    reason: str | None = None
    """Why the XNNPACK partitioner left it out, when it said."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.op_type, "dtypes": list(self.dtypes), "rank": self.rank,
                "runs_on": self.runs_on, **({"reason": self.reason} if self.reason else {})}


@dataclass
class Lowered:
    """The serialised program and what lowering did."""

    program: bytes
    ops: list[LoweredOp]
    settings: dict[str, Any] = field(default_factory=dict)


class _WhyNot(logging.Handler):
    """Collects the XNNPACK partitioner's ``WhyNoPartition`` records (node name -> first reason)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.reasons: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        why = record.msg  # the WhyNoPartition object, mutated by the next call: read it now
        node, reason = getattr(why, "node", None), getattr(why, "reason", None)
        if node is not None and reason:
            self.reasons.setdefault(str(node.name), str(reason))


@contextlib.contextmanager
def _capture_why() -> Iterator[_WhyNot]:
    logger = logging.getLogger(_WHY_LOGGER)
    handler = _WhyNot()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _op_name(target: Any) -> str:
    """``aten.convolution.default`` for an edge op, ``getitem`` for Python's operator, ..."""
    return str(getattr(target, "__name__", None) or target)


def _facts(node: Any) -> tuple[tuple[str, ...], int | None]:
    value = node.meta.get("val")
    values = value if isinstance(value, (list, tuple)) else [value]
    dtypes = tuple(dict.fromkeys(str(v.dtype).replace("torch.", "") for v in values if hasattr(v, "dtype")))
    ranks = [v.dim() for v in values if hasattr(v, "dim")]
    return dtypes, (max(ranks) if ranks else None)


def _configured_ops() -> frozenset[str]:
    """Op names (``convolution.default``) the XNNPACK partitioner has a config for."""
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS

    return frozenset(str(config().target_name) for config in ALL_PARTITIONER_CONFIGS)


def _reason(name: str, op_type: str, reasons: dict[str, str], configured: frozenset[str]) -> str:
    if name in reasons:
        return reasons[name]
    if op_type.split(".", 1)[-1] not in configured:
        return f"the XNNPACK partitioner has no config for {op_type}"
    return "the XNNPACK partitioner left it out without a reason"


def lowered_ops(graph_module: Any, reasons: dict[str, str]) -> list[LoweredOp]:
    """Every compute op of a lowered edge program in graph order: delegated ones expanded from their
    lowered module's original graph, the rest as left on the portable kernels."""
    ops: list[LoweredOp] = []
    configured = _configured_ops()
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = _op_name(node.target)
        if name == "executorch_call_delegate":
            lowered = getattr(graph_module, node.args[0].target)
            backend = getattr(lowered, "backend_id", BACKEND)
            for inner in lowered.original_module.graph_module.graph.nodes:
                if inner.op == "call_function" and _op_name(inner.target) not in _SKIPPED:
                    ops.append(LoweredOp(inner.name, _op_name(inner.target), *_facts(inner), runs_on=backend))
        elif name not in _SKIPPED:
            ops.append(LoweredOp(node.name, name, *_facts(node), runs_on=PORTABLE,
                                  reason=_reason(node.name, name, reasons, configured)))
    return ops


def lower(source: ModelSource, quantization: QuantizationPlan | None) -> Lowered:
    """Export ``source``, quantize it when ``quantization`` is given, lower it to XNNPACK and serialise."""
    with quiet_import():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

    program = export_program(source)
    settings: dict[str, Any] = {"partitioner": "XnnpackPartitioner", "export": "torch.export (static shapes)"}
    if quantization is not None:
        from edgepack.exporters.executorch.quant import quantize

        program, used = quantize(program, source, quantization)
        settings |= used
    try:
        with quiet(), _capture_why() as why:
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            ops = lowered_ops(edge.exported_program().graph_module, why.reasons)
            executorch_program = edge.to_executorch()
    except Exception as exc:  # noqa: BLE001
        text = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else ""
        raise ExportError(f"ExecuTorch lowering failed: {type(exc).__name__}: {text}") from None
    delegated = sum(op.runs_on != PORTABLE for op in ops)
    settings["delegated_ops"] = delegated
    settings["portable_ops"] = len(ops) - delegated
    return Lowered(executorch_program.buffer, ops, settings)
