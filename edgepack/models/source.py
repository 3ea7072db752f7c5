"""Core model-side types: :class:`TensorSpec` and :class:`ModelSource`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

Dim = int | str
"""A tensor dimension: a fixed size, or a symbolic name such as ``"batch"``."""

SUPPORTED_DTYPES = ("float32", "float16", "int64", "int32", "int8", "uint8", "bool")
BATCH_DIM_NAMES = ("batch", "batch_size", "batchsize", "n", "b", "bs")
"""Symbolic dim names (case-insensitive) that say "this axis is the batch"."""


@dataclass(frozen=True)
class Preprocess:
    """How raw data becomes the model input: ``(x * scale - mean) / std`` per channel."""

    scale: float = 1.0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "mean": list(self.mean), "std": list(self.std), "description": self.description}


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization of an integer tensor: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (ints or symbolic names), dtype and layout of one model input or output."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"
    layout: str | None = None
    preprocess: Preprocess | None = None
    quant: QuantParams | None = None

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def concrete_shape(self, batch: int = 1) -> tuple[int, ...]:
        """The shape with every symbolic dim replaced by ``batch`` (symbolic dims are batch-like)."""
        return tuple(d if isinstance(d, int) else batch for d in self.shape)

    @property
    def batch_axis(self) -> int:
        """The axis a batch of samples is stacked on.

        Axis 0 when the first dim is 1 or symbolic (the usual ``[batch, ...]``). Inputs whose first dim is a
        fixed size above 1 (an LSTM state ``[2, batch, 128]``) have it elsewhere: the symbolic dim named like
        a batch (:data:`BATCH_DIM_NAMES`, or containing "batch"), else the first symbolic dim, else the first
        dim of size 1; axis 0 when there is none."""
        if not self.shape or not isinstance(self.shape[0], int) or self.shape[0] == 1:
            return 0
        symbolic = [i for i, d in enumerate(self.shape) if isinstance(d, str)]
        named = [i for i in symbolic if str(self.shape[i]).lower() in BATCH_DIM_NAMES or "batch" in str(self.shape[i]).lower()]
        ones = [i for i, d in enumerate(self.shape) if d == 1]
        return (named or symbolic or ones or [0])[0]

    def with_static_shape(self, batch: int = 1) -> "TensorSpec":
        return replace(self, shape=self.concrete_shape(batch))

    def matches(self, array: np.ndarray) -> bool:
        """True when ``array`` has this spec's rank and fixed dims (symbolic dims match anything)."""
        if array.ndim != len(self.shape):
            return False
        return all(not isinstance(d, int) or d == n for d, n in zip(self.shape, array.shape))

    def shape_str(self) -> str:
        return "x".join(str(d) for d in self.shape)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.layout:
            out["layout"] = self.layout
        if self.preprocess is not None:
            out["preprocess"] = self.preprocess.to_dict()
        if self.quant is not None:
            out["quant"] = {"scale": self.quant.scale, "zero_point": self.quant.zero_point}
        return out


@dataclass(frozen=True)
class ConstantInput:
    """A non-tensor ``forward`` argument frozen to a constant (``--input sr:int=16000``; TorchScript sources)."""

    name: str
    dtype: Literal["int", "float", "bool"]
    value: int | float | bool

    def text(self) -> str:
        """The ``--input`` form, ``NAME:TYPE=VALUE``."""
        value = str(self.value).lower() if self.dtype == "bool" else str(self.value)
        return f"{self.name}:{self.dtype}={value}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "value": self.value}


SourceKind = Literal["torchvision", "timm", "factory", "onnx", "pt2", "torchscript", "hf", "demo"]


@dataclass
class ModelSource:
    """A loaded model ready for export: a torch module or an ONNX file, plus its I/O specs.

    ``sha256`` identifies the exact weights (file hash, or a hash of the state dict for modules built
    in-process), so that bundles and caches can be keyed on it.
    """

    kind: SourceKind
    uri: str
    name: str
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    torch_module: Any | None = None
    onnx_path: Path | None = None
    exported_program: Any | None = None
    labels: list[str] | None = None
    code_sha256: str | None = None
    """Hash of user code that defines the model's forward (a factory's .py file), when there is any."""
    weights: str | None = None
    """Where the weights came from (``pretrained: ...``, ``file ...``, or random), for sources that choose."""
    constants: list[ConstantInput] = field(default_factory=list)
    """Non-tensor arguments frozen into the model (TorchScript ``forward(x, sr: int)``); not artifact inputs."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Source-specific facts (e.g. the demo's built-in calibration/eval data)."""

    @property
    def is_torch(self) -> bool:
        return self.torch_module is not None

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "uri": self.uri,
            "name": self.name,
            "sha256": self.sha256,
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
            **({"weights": self.weights} if self.weights is not None else {}),
            **({"constants": [c.to_dict() for c in self.constants]} if self.constants else {}),
        }
