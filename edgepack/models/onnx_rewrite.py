"""Where source-level ONNX rewrites (``--bake-preprocess``, ``--postprocess nms``) write their graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgepack._fs import make_temp_dir

WORK_PREFIX = "edgepack-"
"""Where a rewritten ONNX file goes without a work dir: ``edgepack-<pid>.<random>``, swept by later runs once
this process has gone (:func:`edgepack._fs.sweep_stale`)."""


def save_rewritten(model: Any, source: Path, workdir: Path | None, tag: str) -> Path:
    """Check ``model`` (an ``onnx.ModelProto`` rewritten from the file ``source``) and save it as
    ``<workdir>/<source stem>.<tag>.onnx`` (a fresh pid-owned temp dir when ``workdir`` is None)."""
    import onnx

    onnx.checker.check_model(model)
    folder = workdir if workdir is not None else make_temp_dir(WORK_PREFIX)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{source.stem}.{tag}.onnx"
    onnx.save(model, str(out))
    return out
