"""In-memory sources: an already-built ``torch.nn.Module`` handed to the Python API.

``api.export(module, [...], inputs=["image:1x3x224x224"])`` exports a model a notebook or training script holds,
without writing a factory file first. The module has no file to hash, so its identity (export cache, manifest
``source.sha256``) is the hash of its parameters and buffers (:func:`edgepack.hashing.module_sha256`); the inputs
must be given, since a module carries no input shapes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from edgepack.errors import InputError
from edgepack.models.source import ModelSource, TensorSpec

MODULE_URI_PREFIX = "module:"
"""How an in-memory module is named in the manifest (``module:<ClassName>``)."""


def is_torch_module(value: Any) -> bool:
    """True for a ``torch.nn.Module`` instance (without importing torch for other values)."""
    if type(value).__module__.split(".")[0] in ("builtins", "pathlib", "edgepack"):
        return False
    import torch

    return isinstance(value, torch.nn.Module)


def source_from_module(module: Any, inputs: Sequence[TensorSpec], name: str | None = None) -> ModelSource:
    """A :class:`ModelSource` for ``module`` with the given input specs (at least one; names, shapes, dtypes).

    The module is put in eval mode (as every torch source is); it is not copied, so later changes to it are
    not seen by an export that already loaded it."""
    from edgepack.models.loaders import _torch_source

    if not inputs:
        raise InputError(f"an in-memory {type(module).__name__} needs its inputs",
                         hint='pass inputs=["NAME:1x3x224x224", ...] (the --input syntax) or TensorSpec objects')
    class_name = type(module).__name__
    label = name or re.sub(r"(?<!^)(?=[A-Z])", "-", class_name).lower()
    return _torch_source("factory", f"{MODULE_URI_PREFIX}{class_name}", label, module, list(inputs))
