"""Torch-level compression passes named by recipes (``[[passes]] name = "...", options = {...}``).

A pass takes a torch module and returns a new one (it never mutates its input); its options are a
small pydantic config that rejects unknown keys. Passes are looked up by name in :data:`PASSES`, which
modules register into explicitly through :func:`register_pass` at import of :mod:`edgepack.compress.catalog`.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from edgepack.data.dataset import Dataset
from edgepack.errors import InputError, ProfileError
from edgepack.models.source import ModelSource


class PassConfig(BaseModel):
    """Base of every pass's options: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


TrainStep = Callable[[Any, Any], Any]
"""``train_step(module, batch) -> loss``: one step supplied by the user (edgepack never invents labels). A loss
tensor that requires grad is back-propagated and stepped by the pass; any other return value (a float) means
the step updated the module itself."""


@dataclass(frozen=True)
class PassContext:
    """What a pass may use besides the module: calibration data, and the user's training hooks."""

    calib: Dataset | None = None
    train_data: Iterable[Any] | None = None
    train_step: TrainStep | None = None
    input_names: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


class TorchPass(ABC):
    """One compression technique applied to a torch module."""

    name: ClassVar[str]
    Config: ClassVar[type[PassConfig]] = PassConfig

    def parse(self, options: dict[str, Any]) -> PassConfig:
        try:
            return self.Config.model_validate(options)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "<options>"
            message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
            raise ProfileError(f"pass '{self.name}': {where}: {message}") from None

    @abstractmethod
    def apply(self, module: Any, config: PassConfig, context: PassContext) -> Any:
        """Return a compressed copy of ``module``."""


PASSES: dict[str, TorchPass] = {}


def register_pass(pass_: TorchPass) -> TorchPass:
    """Add a pass to :data:`PASSES`; a second pass with the same name is an error."""
    if pass_.name in PASSES and type(PASSES[pass_.name]) is not type(pass_):
        raise ValueError(f"two compression passes are named '{pass_.name}'")
    PASSES[pass_.name] = pass_
    return pass_


def get_pass(name: str) -> TorchPass:
    from edgepack.compress import catalog  # noqa: F401  (registers the built-in passes)

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
