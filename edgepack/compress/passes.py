"""Torch-level compression passes named by recipes (``[[passes]] name = "...", options = {...}``).

A pass takes a torch module and returns a new one (it never mutates its input); its options are a
small pydantic config that rejects unknown keys. This module is the interface the passes implement;
:mod:`edgepack.compress.catalog` registers the built-in ones and looks them up by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from edgepack.data.dataset import Dataset
from edgepack.errors import ProfileError


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
