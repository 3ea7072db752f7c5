"""Template-facing views of a manifest: identifiers, tensor facts and constants for generated code.

Everything here is a pure function of the manifest dict, so generated files are deterministic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from edgepack.version import __version__
from edgepack.errors import BundleError, UnsupportedError

KOTLIN_TYPES: dict[str, tuple[str, int]] = {
    # dtype: (Kotlin array type the caller passes, bytes per element in the tensor)
    "float32": ("FloatArray", 4),
    "float16": ("ShortArray", 2),  # raw IEEE half bits (android.util.Half converts)
    "int32": ("IntArray", 4),
    "int64": ("LongArray", 8),
    "int8": ("ByteArray", 1),
    "uint8": ("ByteArray", 1),
    "bool": ("BooleanArray", 1),
}
SWIFT_MULTIARRAY_TYPES: dict[str, str] = {
    "float32": ".float32", "float16": ".float16", "int32": ".int32", "int64": ".int32", "int8": ".int32",
    "uint8": ".int32", "bool": ".int32",
}
QUANTIZED_DTYPES: dict[str, tuple[int, int]] = {"int8": (-128, 127), "uint8": (0, 255)}
BAKED_PREFIX = "baked into the model: "
"""Description prefix of a preprocessing baked into the graph (``edgepack.models.bake.BAKED_PREFIX``)."""


def words(name: str) -> list[str]:
    return [w for w in re.split(r"[^0-9A-Za-z]+|(?<=[a-z0-9])(?=[A-Z])", name) if w]


def pascal(name: str) -> str:
    """``digits-cnn`` -> ``DigitsCnn`` (prefixed with ``Model`` when it would start with a digit)."""
    ident = "".join(w[:1].upper() + w[1:].lower() for w in words(name)) or "Model"
    return ident if ident[0].isalpha() else f"Model{ident}"


def camel(name: str) -> str:
    ident = pascal(name)
    return ident[:1].lower() + ident[1:]


def snake(name: str) -> str:
    ident = "_".join(w.lower() for w in words(name)) or "model"
    return ident if ident[0].isalpha() else f"model_{ident}"


def upper(name: str) -> str:
    return snake(name).upper()


def literal(value: float) -> str:
    """A float literal valid in Kotlin, Swift and Python (``repr`` keeps every digit)."""
    text = repr(float(value))
    return text if ("." in text or "e" in text) else f"{text}.0"


@dataclass(frozen=True)
class Tensor:
    """One input or output as generated code sees it."""

    name: str
    """The name in the model file (signature key for .tflite)."""
    source_name: str
    """The source model's name for this tensor (differs from ``name`` for some .tflite outputs)."""
    ident: str
    const: str
    shape: tuple[int | str, ...]
    static_shape: tuple[int, ...]
    size: int
    dtype: str
    layout: str | None
    scale: float | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    preprocess_description: str
    channel_axis: int | None
    quant_scale: float | None
    quant_zero_point: int | None
    preprocess_baked: bool = False
    """The preprocessing is in the model graph: inputs are raw data, nothing is applied by generated code."""

    @property
    def has_preprocess(self) -> bool:
        return self.scale is not None

    @property
    def quantized(self) -> bool:
        return self.quant_scale is not None and self.dtype in QUANTIZED_DTYPES

    @property
    def qmin(self) -> int:
        return QUANTIZED_DTYPES[self.dtype][0]

    @property
    def qmax(self) -> int:
        return QUANTIZED_DTYPES[self.dtype][1]

    @property
    def channels(self) -> int:
        return self.static_shape[self.channel_axis] if self.channel_axis is not None else 1

    @property
    def channel_stride(self) -> int:
        """Elements between consecutive channels of one pixel (row-major)."""
        if self.channel_axis is None:
            return 1
        stride = 1
        for dim in self.static_shape[self.channel_axis + 1 :]:
            stride *= dim
        return stride

    @property
    def per_channel(self) -> bool:
        return len(self.mean) > 1 or len(self.std) > 1

    @property
    def kotlin_type(self) -> str:
        """The array type the generated Kotlin ``run`` takes or returns for this tensor."""
        if self.quantized or self.has_preprocess:
            return "FloatArray"
        return _kotlin(self.dtype)[0]

    @property
    def bytes_per_element(self) -> int:
        return _kotlin(self.dtype)[1]

    @property
    def swift_type(self) -> str:
        return SWIFT_MULTIARRAY_TYPES.get(self.dtype, ".float32")

    @property
    def shape_text(self) -> str:
        return "[" + ", ".join(str(d) for d in self.shape) + "]"

    def values(self, attr: str) -> list[str]:
        return [literal(v) for v in getattr(self, attr)]


def _kotlin(dtype: str) -> tuple[str, int]:
    try:
        return KOTLIN_TYPES[dtype]
    except KeyError:
        raise UnsupportedError(f"tensor dtype {dtype}: no Kotlin mapping in edgepack's generator") from None


def tensor(spec: Mapping[str, Any], source_name: str | None = None) -> Tensor:
    """A :class:`Tensor` from a manifest tensor spec (``TensorSpec.to_dict`` form)."""
    try:
        name = str(spec["name"])
        shape = tuple(d if isinstance(d, str) else int(d) for d in spec["shape"])
        dtype = str(spec.get("dtype", "float32"))
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"malformed tensor spec in the manifest: {exc}") from None
    static = tuple(d if isinstance(d, int) and d > 0 else 1 for d in shape)
    size = 1
    for dim in static:
        size *= dim
    layout = spec.get("layout")
    axis = layout.index("C") if layout and "C" in layout and len(layout) == len(shape) else None
    pre = spec.get("preprocess") or None
    baked = bool(pre) and (bool(pre.get("baked")) or str(pre.get("description") or "").startswith(BAKED_PREFIX))
    if baked:  # in the graph (--bake-preprocess): the app feeds raw data, the runner applies nothing
        pre = None
    quant = spec.get("quant") or None
    mean = tuple(float(v) for v in (pre.get("mean") if pre else ())) or (0.0,)
    std = tuple(float(v) for v in (pre.get("std") if pre else ())) or (1.0,)
    return Tensor(
        name=name,
        source_name=source_name or name,
        ident=camel(source_name or name),
        const=upper(source_name or name),
        shape=shape,
        static_shape=static,
        size=size,
        dtype=dtype,
        layout=layout,
        scale=float(pre.get("scale", 1.0)) if pre else None,
        mean=mean,
        std=std,
        preprocess_description=str(pre.get("description", "")) if pre else "",
        channel_axis=axis if pre else None,
        quant_scale=float(quant["scale"]) if quant else None,
        quant_zero_point=int(quant["zero_point"]) if quant else None,
        preprocess_baked=baked,
    )


def output_source_names(artifact: Mapping[str, Any]) -> dict[str, str]:
    """``{artifact output name: source output name}`` from a .tflite artifact's ``output_map``."""
    mapping = (artifact.get("settings") or {}).get("output_map") or {}
    return {str(entry["name"]): str(source) for source, entry in mapping.items()}


def tensors(artifact: Mapping[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
    """The artifact's inputs and outputs (outputs named after the source where the artifact renames them)."""
    renamed = output_source_names(artifact)
    inputs = [tensor(s) for s in artifact.get("inputs", ())]
    outputs = [tensor(s, renamed.get(str(s.get("name")))) for s in artifact.get("outputs", ())]
    return inputs, outputs


def model_names(manifest: Mapping[str, Any]) -> dict[str, str]:
    """Identifiers derived from the bundle name, shared by every generated file."""
    name = str(manifest.get("name") or "model")
    return {
        "bundle_name": name,
        "class_prefix": pascal(name),
        "runner_class": f"{pascal(name)}Runner",
        "module": f"{snake(name)}_runner",
        "kotlin_package": f"edgepack.generated.{snake(name).replace('_', '')}",
        "edgepack_version": __version__,
    }


def ok_targets(manifest: Mapping[str, Any], formats: tuple[str, ...]) -> list[str]:
    """Targets whose export succeeded with an artifact in one of ``formats``, ordered by the format's
    position in ``formats``, then by target id."""
    found = []
    for target_id, entry in (manifest.get("targets") or {}).items():
        artifact = entry.get("artifact") or {}
        if entry.get("status") == "ok" and artifact.get("format") in formats:
            found.append((formats.index(artifact["format"]), target_id))
    return [target_id for _, target_id in sorted(found)]
