"""The :class:`Contract`: what an artifact takes and returns, as one typed, JSON-serialisable object.

Built from the source (labels, preprocessing, hashes) and the artifact record (the artifact's own I/O
names, shapes, dtypes and layouts, its recipe, precision and toolchain). Serialised as sorted, compact JSON
with no timestamps, so exporting the same model twice writes byte-identical metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgepack.exporters.base import Artifact
    from edgepack.models.source import ModelSource, TensorSpec

CONTRACT_SCHEMA = "edgepack.contract/1"
KEY_PREFIX = "edgepack."
"""Prefix of the flat metadata keys (ONNX ``metadata_props``, Core ML ``userDefined``)."""

CLASS_LOGITS = "class logits"
DENSE_MAP = "dense map"
EMBEDDING = "embedding"
UNKNOWN = "unknown"
DETECTION_SEMANTICS = {
    "boxes": "detection boxes (x1, y1, x2, y2; rows past count are padding)",
    "scores": "detection scores",
    "classes": "detection class indices (-1 in padding rows)",
    "count": "number of detections",
}
"""Semantics of the fixed-size outputs of ``--postprocess nms`` (:mod:`edgepack.postprocess`)."""


@dataclass(frozen=True)
class TensorContract:
    """One input or output as the artifact sees it (``name``) and as the source named it (``source_name``)."""

    name: str
    source_name: str
    shape: tuple[int | str, ...]
    dtype: str
    layout: str | None = None
    preprocess: dict[str, Any] | None = None
    """Inputs only: ``{"scale", "mean", "std", "colour_order", "size": [h, w] | None, "description",
    "formula"}`` — the model input is ``(x * scale - mean) / std`` per channel."""
    semantics: str | None = None
    """Outputs only: ``class logits`` / ``dense map`` / ``embedding`` / ``unknown``."""
    quant: dict[str, Any] | None = None
    """Integer I/O: ``{"scale", "zero_point"}`` (``real = scale * (q - zero_point)``)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "source_name": self.source_name, "shape": list(self.shape),
                               "dtype": self.dtype, "layout": self.layout}
        if self.preprocess is not None or self.semantics is None:
            out["preprocess"] = self.preprocess
        if self.semantics is not None:
            out["semantics"] = self.semantics
        if self.quant is not None:
            out["quant"] = self.quant
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TensorContract":
        return cls(data["name"], data.get("source_name", data["name"]), tuple(data["shape"]), data["dtype"],
                   data.get("layout"), data.get("preprocess"), data.get("semantics"), data.get("quant"))


@dataclass(frozen=True)
class Contract:
    """The deployment contract of one artifact."""

    model: str
    source_uri: str
    source_sha256: str
    recipe: str
    precision: str
    format: str
    target: str
    edgepack_version: str
    labels: tuple[str, ...] | None
    inputs: tuple[TensorContract, ...]
    outputs: tuple[TensorContract, ...]
    toolchain: dict[str, str] = field(default_factory=dict)
    passes: str | None = None
    """Compression passes applied before export (``source_sha256`` is then the compressed weights' hash)."""
    postprocess: dict[str, Any] | None = None
    """Post-processing in the graph (``--postprocess nms``: kind, iou, conf, max_det, the head it follows)."""
    schema: str = CONTRACT_SCHEMA

    # -- building ---------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        source: "ModelSource",
        *,
        target: str,
        recipe: str,
        precision: str,
        format: str,
        inputs: "tuple[TensorSpec, ...] | list[TensorSpec]",
        outputs: "tuple[TensorSpec, ...] | list[TensorSpec]",
        toolchain: dict[str, str],
    ) -> "Contract":
        from edgepack.version import __version__

        labels = tuple(str(label) for label in source.labels) if source.labels else None
        ins = tuple(_input(spec, src) for spec, src in zip(inputs, _pad(source.inputs, len(inputs))))
        outs = tuple(_output(spec, src, labels) for spec, src in zip(outputs, _pad(source.outputs, len(outputs))))
        postprocess = source.extra.get("postprocess")
        if postprocess:
            outs = tuple(replace(t, semantics=DETECTION_SEMANTICS.get(t.source_name, t.semantics)) for t in outs)
        passes = source.extra.get("passes")
        return cls(model=source.name, source_uri=source.uri, source_sha256=source.sha256, recipe=recipe,
                   precision=precision, format=format, target=target, edgepack_version=__version__, labels=labels,
                   inputs=ins, outputs=outs, toolchain={k: str(v) for k, v in sorted(toolchain.items())},
                   passes=str(passes) if passes else None, postprocess=dict(postprocess) if postprocess else None)

    @classmethod
    def for_artifact(cls, source: "ModelSource", artifact: "Artifact") -> "Contract":
        """The contract of ``artifact`` exported from ``source``."""
        return cls.build(source, target=artifact.target_id, recipe=artifact.recipe, precision=artifact.precision,
                         format=artifact.format, inputs=artifact.inputs, outputs=artifact.outputs,
                         toolchain=artifact.toolchain)

    # -- serialising ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out = {
            "schema": self.schema, "model": self.model, "source_uri": self.source_uri,
            "source_sha256": self.source_sha256, "passes": self.passes, "recipe": self.recipe,
            "precision": self.precision, "format": self.format, "target": self.target,
            "edgepack_version": self.edgepack_version, "toolchain": dict(self.toolchain),
            "labels": list(self.labels) if self.labels is not None else None,
            "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
        }
        if self.postprocess is not None:  # absent otherwise: contracts without it stay byte-identical
            out["postprocess"] = self.postprocess
        return out

    def to_json(self) -> str:
        return dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Contract":
        labels = data.get("labels")
        return cls(model=data["model"], source_uri=data["source_uri"], source_sha256=data["source_sha256"],
                   recipe=data["recipe"], precision=data["precision"], format=data["format"], target=data["target"],
                   edgepack_version=data["edgepack_version"], labels=tuple(labels) if labels is not None else None,
                   inputs=tuple(TensorContract.from_dict(t) for t in data["inputs"]),
                   outputs=tuple(TensorContract.from_dict(t) for t in data["outputs"]),
                   toolchain=dict(data.get("toolchain", {})), passes=data.get("passes"),
                   postprocess=data.get("postprocess"), schema=data.get("schema", CONTRACT_SCHEMA))

    @classmethod
    def from_json(cls, text: str | bytes) -> "Contract":
        return cls.from_dict(json.loads(text))

    def flat(self) -> dict[str, str]:
        """Flat ``edgepack.*`` string entries (values JSON where structured) for key/value containers
        (ONNX ``metadata_props``, Core ML ``userDefined``, OpenVINO ``rt_info``)."""
        entries = {
            "contract": self.to_json(),
            "schema": self.schema,
            "labels": dumps(list(self.labels) if self.labels is not None else None),
            "preprocess": dumps({t.name: t.preprocess for t in self.inputs}),
            "inputs": dumps([t.to_dict() for t in self.inputs]),
            "outputs": dumps([t.to_dict() for t in self.outputs]),
            "source_uri": self.source_uri,
            "source_sha256": self.source_sha256,
            "recipe": self.recipe,
            "precision": self.precision,
            "format": self.format,
            "target": self.target,
            "version": self.edgepack_version,
            "toolchain": dumps(self.toolchain),
        }
        if self.postprocess is not None:
            entries["postprocess"] = dumps(self.postprocess)
        return {f"{KEY_PREFIX}{key}": value for key, value in sorted(entries.items())}

    def summary(self) -> str:
        """One line for description fields."""
        ins = ", ".join(f"{t.name} {t.dtype}[{'x'.join(map(str, t.shape))}] {t.layout or ''}".strip()
                        for t in self.inputs)
        outs = ", ".join(f"{t.name} ({t.semantics})" for t in self.outputs)
        return (f"{self.model} ({self.recipe}, {self.precision}) exported by edgepack {self.edgepack_version}; "
                f"inputs: {ins}; outputs: {outs}; source sha256 {self.source_sha256}")


def dumps(value: Any) -> str:
    """Deterministic compact JSON."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# -- helpers -------------------------------------------------------------------------------------


def _pad(specs: list[Any], n: int) -> list[Any]:
    return list(specs[:n]) + [None] * max(0, n - len(specs))


def _channel_axis(layout: str | None, rank: int) -> tuple[int | None, int | None, int | None]:
    """(channel, height, width) axes for NCHW / NHWC style layouts."""
    if not layout or len(layout) != rank or not {"C", "H", "W"} <= set(layout.upper()):
        return None, None, None
    upper = layout.upper()
    return upper.index("C"), upper.index("H"), upper.index("W")


def _input(spec: "TensorSpec", source: "TensorSpec | None") -> TensorContract:
    preprocess_spec = spec.preprocess if spec.preprocess is not None else getattr(source, "preprocess", None)
    preprocess = None
    if preprocess_spec is not None:
        c, h, w = _channel_axis(spec.layout, len(spec.shape))
        channels = spec.shape[c] if c is not None else None
        size = [spec.shape[h], spec.shape[w]] if h is not None and isinstance(spec.shape[h], int) and isinstance(
            spec.shape[w], int) else None
        description = preprocess_spec.description or ""
        colour = {1: "grayscale", 3: "BGR" if "BGR" in description.upper() else "RGB"}.get(channels)  # type: ignore[arg-type]
        preprocess = {
            "scale": float(preprocess_spec.scale),
            "mean": [float(v) for v in preprocess_spec.mean],
            "std": [float(v) for v in preprocess_spec.std],
            "colour_order": colour,
            "size": size,
            "description": description,
            "formula": "(x * scale - mean) / std, per channel",
        }
    return TensorContract(spec.name, source.name if source is not None else spec.name, tuple(spec.shape), spec.dtype,
                          spec.layout, preprocess, None, _quant(spec))


def _output(spec: "TensorSpec", source: "TensorSpec | None", labels: tuple[str, ...] | None) -> TensorContract:
    name = source.name if source is not None else spec.name
    return TensorContract(spec.name, name, tuple(spec.shape), spec.dtype, spec.layout, None,
                          semantics(name, tuple(spec.shape), labels), _quant(spec))


def _quant(spec: "TensorSpec") -> dict[str, Any] | None:
    if spec.quant is None:
        return None
    return {"scale": float(spec.quant.scale), "zero_point": int(spec.quant.zero_point)}


def semantics(name: str, shape: tuple[int | str, ...], labels: tuple[str, ...] | None) -> str:
    """What an output holds, from its name, shape and the labels (a guess; ``unknown`` when unsure)."""
    lowered = name.lower()
    last = shape[-1] if shape else None
    if labels and last == len(labels):
        return CLASS_LOGITS
    if any(word in lowered for word in ("logit", "class", "score", "prob")) and len(shape) == 2:
        return CLASS_LOGITS
    if any(word in lowered for word in ("embed", "pooler", "hidden", "feature")):
        return EMBEDDING
    if len(shape) == 4:
        return DENSE_MAP
    return UNKNOWN
