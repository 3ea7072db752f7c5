"""``--labels FILE``: class names for a model's outputs, written into every artifact's contract.

A text file holds one label per line (in output index order; trailing empty lines ignored); a ``.json`` file
holds a list, or an ``{index: name}`` object such as Hugging Face's ``id2label``. The count must match the
classes of one of the model's outputs (the last dim of a class-score output, or ``C`` of a YOLO-style
``[1, 4+C, N]`` / ``[1, N, 4+C]`` detection head), so a label file for another model is refused before any work.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from edgepack.errors import InputError
from edgepack.models.source import ModelSource

BOX_COORDINATES = 4
"""A detection head's first four channels are box coordinates, then one score per class."""


def read_labels(path: str | Path) -> tuple[str, ...]:
    """The labels in ``path`` (text: one per line; JSON: a list or an index -> name object)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--labels {file}: cannot read it ({exc.__class__.__name__}: {exc})") from None
    if file.suffix.lower() == ".json":
        labels = _from_json(file, text)
    else:
        labels = [line.strip() for line in text.rstrip("\n").split("\n")] if text.strip() else []
    if not labels:
        raise InputError(f"--labels {file}: no labels in it")
    if any(not label for label in labels):
        raise InputError(f"--labels {file}: label {labels.index('') + 1} is empty")
    return tuple(labels)


def _from_json(file: Path, text: str) -> list[str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--labels {file}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if isinstance(data, list) and all(isinstance(v, str) for v in data):
        return [v.strip() for v in data]
    if isinstance(data, dict):
        try:
            indexed = {int(k): str(v).strip() for k, v in data.items()}
        except ValueError:
            raise InputError(f"--labels {file}: object keys must be class indices (like id2label)") from None
        if sorted(indexed) != list(range(len(indexed))):
            raise InputError(f"--labels {file}: class indices must be 0..{len(indexed) - 1} without gaps")
        return [indexed[i] for i in range(len(indexed))]
    raise InputError(f"--labels {file}: expected a list of names or an index -> name object")


def class_counts(source: ModelSource) -> set[int]:
    """The class counts the source's outputs can carry labels for."""
    counts: set[int] = set()
    for spec in source.outputs:
        dims = [d for d in spec.shape if isinstance(d, int)]
        if dims:
            counts.add(dims[-1])
        if len(spec.shape) == 3:
            counts.update(d - BOX_COORDINATES for d in spec.shape[1:] if isinstance(d, int) and d > BOX_COORDINATES)
    return counts


def with_labels(source: ModelSource, labels: tuple[str, ...], origin: str) -> ModelSource:
    """``source`` with ``labels`` (replacing any it brought), after checking their count against its outputs."""
    counts = class_counts(source)
    if len(labels) not in counts:
        shapes = ", ".join(f"{s.name} {s.shape_str()}" for s in source.outputs)
        raise InputError(f"--labels {origin}: {len(labels)} labels, but no output of {source.uri} has "
                         f"{len(labels)} classes (outputs: {shapes})")
    return replace(source, labels=list(labels))
