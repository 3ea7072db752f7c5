"""``--postprocess nms`` settings and the detection-head contract they apply to.

A YOLO-style head has one float output of shape ``[1, 4+C, N]`` (channels first, e.g. YOLOv8) or
``[1, N, 4+C]`` (boxes last): for each of ``N`` candidate boxes, ``cx, cy, w, h`` followed by ``C`` class
scores (already activated; no separate objectness column). :func:`head_layout` accepts exactly these
layouts (static ``C >= 1`` and ``N >= 1``, batch 1) and refuses anything else with one line.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from edgepack.errors import InputError

POSTPROCESS_KINDS = ("nms",)
"""Values ``--postprocess`` accepts."""
DEFAULT_IOU = 0.45
DEFAULT_CONF = 0.25
DEFAULT_MAX_DET = 100
MAX_MAX_DET = 10_000
OUTPUT_NAMES = ("boxes", "scores", "classes", "count")
"""The artifact's outputs after NMS, in this order."""

Layout = Literal["channels_first", "boxes_first"]
"""``channels_first``: ``[1, 4+C, N]``; ``boxes_first``: ``[1, N, 4+C]``."""


@dataclass(frozen=True)
class NmsSettings:
    """What the appended NMS does: class-aware greedy NMS, one class per box (its best score).

    A candidate is kept when its best class score is ``> conf``; a kept box suppresses later (lower-scoring)
    boxes of the same class whose IoU with it is ``> iou``; at most ``max_det`` boxes, best score first.
    """

    iou: float = DEFAULT_IOU
    conf: float = DEFAULT_CONF
    max_det: int = DEFAULT_MAX_DET
    kind: str = "nms"

    def __post_init__(self) -> None:
        if self.kind not in POSTPROCESS_KINDS:
            raise InputError(f"--postprocess {self.kind}: unknown post-processing",
                             hint=f"use one of {', '.join(POSTPROCESS_KINDS)}")
        if not (isinstance(self.iou, (int, float)) and math.isfinite(self.iou) and 0 < self.iou <= 1):
            raise InputError(f"--iou {self.iou}: must be in (0, 1] (the IoU above which a box is suppressed)")
        if not (isinstance(self.conf, (int, float)) and math.isfinite(self.conf) and 0 <= self.conf < 1):
            raise InputError(f"--conf {self.conf}: must be in [0, 1) (the class score a box must exceed)")
        if isinstance(self.max_det, bool) or not isinstance(self.max_det, int) or not 1 <= self.max_det <= MAX_MAX_DET:
            raise InputError(f"--max-det {self.max_det}: must be an integer between 1 and {MAX_MAX_DET}")

    def to_dict(self) -> dict[str, Any]:
        """The contract's ``postprocess`` entry (also what keys the export cache)."""
        return {**asdict(self), "box_format_in": "cxcywh", "box_format_out": "xyxy", "class_aware": True,
                "outputs": list(OUTPUT_NAMES)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NmsSettings":
        return cls(iou=float(data["iou"]), conf=float(data["conf"]), max_det=int(data["max_det"]),
                   kind=str(data.get("kind", "nms")))


def parse_postprocess(kind: str | None, *, iou: float | None, conf: float | None,
                      max_det: int | None) -> NmsSettings | None:
    """The settings for ``--postprocess KIND`` (``None``: no post-processing); ``--iou``/``--conf``/
    ``--max-det`` without ``--postprocess`` are refused rather than ignored."""
    if kind is None or kind == "none":
        given = [flag for flag, value in (("--iou", iou), ("--conf", conf), ("--max-det", max_det)) if value is not None]
        if given:
            raise InputError(f"{', '.join(given)} given without --postprocess nms", hint="add --postprocess nms")
        return None
    return NmsSettings(iou=DEFAULT_IOU if iou is None else iou, conf=DEFAULT_CONF if conf is None else conf,
                       max_det=DEFAULT_MAX_DET if max_det is None else max_det, kind=kind.strip().lower())


def head_layout(shape: tuple[Any, ...], name: str, where: str) -> tuple[Layout, int, int]:
    """``(layout, classes, boxes)`` of a detection head output; :class:`InputError` for any other layout.

    ``[1, 4+C, N]`` is read as channels first unless only the last dim can hold ``4+C`` channels; a square
    ``[1, K, K]`` is ambiguous and refused.
    """
    dims = tuple(1 if not isinstance(d, int) and i == 0 else d for i, d in enumerate(shape))
    if len(dims) != 3 or dims[0] != 1 or not all(isinstance(d, int) and d >= 1 for d in dims):
        raise InputError(
            f"--postprocess nms: output '{name}' of {where} is {_shape(shape)}; the detection head contract is "
            "one output [1, 4+C, N] or [1, N, 4+C] (cx, cy, w, h + C class scores per box, static dims)")
    _, a, b = dims
    first_ok, last_ok = a >= 5 and b > a, b >= 5 and a > b
    if a == b:
        raise InputError(f"--postprocess nms: output '{name}' of {where} is {_shape(shape)}: the channel axis "
                         "(4+C) and the box axis (N) cannot be told apart when they are equal")
    if first_ok:
        return "channels_first", a - 4, b
    if last_ok:
        return "boxes_first", b - 4, a
    raise InputError(f"--postprocess nms: output '{name}' of {where} is {_shape(shape)}: needs 4 box values plus "
                     "at least one class score per box ([1, 4+C, N] or [1, N, 4+C] with N > 4+C)")


def _shape(shape: tuple[Any, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
