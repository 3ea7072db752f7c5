"""The source model as a static-shape ``torch.export`` program: what lowering and PT2E quantization start from."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from typing import Any

from edgepack.errors import ExportError
from edgepack.models.source import ModelSource


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """torch.export and the PT2E passes without their warnings and prints."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def example_args(source: ModelSource) -> tuple:
    """One batch-1 example per source input, in the source's input order."""
    import torch

    from edgepack.models.sample import example_inputs

    arrays = example_inputs(source.inputs, batch=1, seed=0)
    return tuple(torch.from_numpy(arrays[s.name]) for s in source.inputs)


def export_program(source: ModelSource) -> Any:
    """The source as a static-shape ``torch.export`` program (its own exported program when it has one)."""
    import torch

    if source.exported_program is not None:
        return source.exported_program
    try:
        with quiet():
            return torch.export.export(source.torch_module.eval(), example_args(source))
    except Exception as exc:  # noqa: BLE001 - torch.export failures are many kinds
        raise ExportError(f"torch.export of {source.uri} failed: {type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0][:240] if str(exc).strip() else ''}") from None
