"""The descriptor beside a ``.pte`` (``executorch.json``): the program's hash and every op of the lowered
program with where it runs (XNNPACK delegate or portable kernels) and why, read back for placement.

The XNNPACK delegate payload inside the ``.pte`` is an opaque backend blob, so the op list is recorded at
lowering time, when the delegated subgraphs are still FX graphs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgepack.errors import BundleError
from edgepack.exporters.executorch.lower import BACKEND, PORTABLE, LoweredOp
from edgepack.hashing import file_sha256
from edgepack.targets.placement import GraphOp

DESCRIPTOR = "executorch.json"
CONTRACT = "contract.json"
"""The deployment contract beside the program (a ``.pte`` has no free-form metadata slot)."""


def write_descriptor(program: Path, ops: list[LoweredOp], settings: dict[str, Any]) -> Path:
    """Write ``executorch.json`` beside ``program``."""
    path = program.with_name(DESCRIPTOR)
    body = {"program": program.name, "program_sha256": file_sha256(program), **settings,
            "ops": [op.to_dict() for op in ops]}
    path.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
    return path


def read_descriptor(path: Path) -> dict[str, Any]:
    """The descriptor of the program at ``path`` (the ``.pte`` or the descriptor itself)."""
    descriptor = path if path.name == DESCRIPTOR else path.with_name(DESCRIPTOR)
    if not descriptor.is_file():
        raise BundleError(f"{path}: no {DESCRIPTOR} beside the ExecuTorch program (it lists the lowered ops)")
    return json.loads(descriptor.read_text())


PLACED_ON = {BACKEND: "xnnpack", PORTABLE: "portable"}
"""Where the lowered program runs an op -> the accelerator of an ExecuTorch profile (named after its backends)."""


def executorch_graph_ops(path: Path) -> list[GraphOp]:
    """The lowered program's ops in the ``executorch`` vocabulary (edge-dialect op names), each with where the
    partitioner put it and, for an op it left out, its reason."""
    return [GraphOp(name=op["name"], op_type=op["type"], dtypes=tuple(op.get("dtypes") or ()), rank=op.get("rank"),
                    placed_on=PLACED_ON.get(op.get("runs_on", ""), op.get("runs_on")), placement_reason=op.get("reason"))
            for op in read_descriptor(path)["ops"]]


def delegation_summary(ops: list[LoweredOp]) -> dict[str, Any]:
    """What the partitioner did: delegated op counts by type, and each op left on the portable kernels."""
    delegated: dict[str, int] = {}
    for op in ops:
        if op.runs_on != PORTABLE:
            delegated[op.op_type] = delegated.get(op.op_type, 0) + 1
    portable = [{"op": op.name, "type": op.op_type, "reason": op.reason or ""}
                for op in ops if op.runs_on == PORTABLE]
    return {"delegated": dict(sorted(delegated.items())), "portable": portable}
