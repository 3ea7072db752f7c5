"""The ncnn ``.param`` text format: read it into layers and write it back (used by the int8 writer and the graph
reader). One line per layer: ``type name n_bottoms n_tops bottoms... tops... id=value...``; array values are
``-233XX=n,v1,...`` (key ``-23300 - id``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgepack.errors import ExportError

MAGIC = "7767517"
ARRAY_KEY_BASE = -23300


@dataclass
class Layer:
    """One ncnn layer as written in a ``.param`` file (parameter values kept as their text)."""

    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, str] = field(default_factory=dict)
    """Parameter id -> value text; array parameters under their id (``-23310`` is stored as ``10``)."""
    arrays: frozenset[int] = frozenset()
    """Ids whose value is an array (written back with the ``-233XX`` key)."""

    def int_param(self, key: int, default: int) -> int:
        return int(self.params[key]) if key in self.params else default

    def line(self) -> str:
        items = " ".join(
            f"{ARRAY_KEY_BASE - key if key in self.arrays else key}={value}" for key, value in self.params.items()
        )
        head = f"{self.type:<24} {self.name:<24} {len(self.bottoms)} {len(self.tops)}"
        return " ".join(part for part in (head, *self.bottoms, *self.tops, items) if part)


def read_param(path: Path) -> list[Layer]:
    """The layers of an ncnn ``.param`` file, in file order."""
    lines = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines or lines[0] != [MAGIC] or len(lines) < 2:
        raise ExportError(f"{path}: not an ncnn .param file (magic {MAGIC} missing)")
    layers: list[Layer] = []
    for fields in lines[2:]:
        kind, name, n_bottoms, n_tops = fields[0], fields[1], int(fields[2]), int(fields[3])
        bottoms = fields[4 : 4 + n_bottoms]
        tops = fields[4 + n_bottoms : 4 + n_bottoms + n_tops]
        params: dict[int, str] = {}
        arrays: set[int] = set()
        for item in fields[4 + n_bottoms + n_tops :]:
            key_text, _, value = item.partition("=")
            key = int(key_text)
            if key <= ARRAY_KEY_BASE:
                key = ARRAY_KEY_BASE - key
                arrays.add(key)
            params[key] = value
        layers.append(Layer(kind, name, bottoms, tops, params, frozenset(arrays)))
    return layers


def write_param(path: Path, layers: list[Layer]) -> None:
    """Write ``layers`` as an ncnn ``.param`` file."""
    blobs = {blob for layer in layers for blob in (*layer.bottoms, *layer.tops)}
    text = [MAGIC, f"{len(layers)} {len(blobs)}", *(layer.line() for layer in layers)]
    Path(path).write_text("\n".join(text) + "\n")
