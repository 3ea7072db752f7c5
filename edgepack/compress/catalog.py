"""The compression passes recipes can name: the built-in ones registered explicitly, in one place, and the
lookup and application by name (:func:`get_pass`, :func:`apply_passes`)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from edgepack.compress.cluster import Palettize
from edgepack.compress.distill import DistillPass
from edgepack.compress.lowrank import LowRank
from edgepack.compress.passes import PassContext, TorchPass
from edgepack.compress.prune import MagnitudePrune, SemiStructured24, StructuredPrune
from edgepack.compress.qat import QatPass
from edgepack.errors import InputError, ProfileError
from edgepack.models.source import ModelSource

PASSES: dict[str, TorchPass] = {}


def register_pass(pass_: TorchPass) -> TorchPass:
    """Add a pass to :data:`PASSES`; a second pass with the same name is an error."""
    if pass_.name in PASSES and type(PASSES[pass_.name]) is not type(pass_):
        raise ValueError(f"two compression passes are named '{pass_.name}'")
    PASSES[pass_.name] = pass_
    return pass_


def get_pass(name: str) -> TorchPass:
    try:
        return PASSES[name]
    except KeyError:
        raise ProfileError(f"unknown compression pass '{name}'", hint=f"known: {', '.join(sorted(PASSES))}") from None


def apply_passes(source: ModelSource, specs: Iterable[Any], context: PassContext) -> ModelSource:
    """Run ``specs`` (recipe ``PassSpec`` items) in order on a copy of the source's torch module."""
    specs = list(specs)
    if not specs:
        return source
    if source.torch_module is None:
        raise InputError(f"{source.uri}: compression passes need a torch model, not an ONNX file")
    from edgepack.hashing import module_sha256

    module = copy.deepcopy(source.torch_module)
    for spec in specs:
        pass_ = get_pass(spec.name)
        module = pass_.apply(module, pass_.parse(spec.options), context)
        module.eval()
    names = "+".join(spec.name for spec in specs)
    return replace(
        source,
        torch_module=module,
        sha256=module_sha256(module),
        onnx_path=None,
        exported_program=None,
        extra={k: v for k, v in source.extra.items() if k != "_onnx_cache"} | {"passes": names},
    )


for _pass in (MagnitudePrune(), StructuredPrune(), SemiStructured24(), LowRank(), Palettize(), DistillPass(), QatPass()):
    register_pass(_pass)
