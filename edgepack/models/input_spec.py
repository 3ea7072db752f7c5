"""Parsing ``--input NAME:1x3x224x224:float32`` into :class:`TensorSpec`."""

from __future__ import annotations

import re

from edgepack.errors import InputError
from edgepack.models.source import SUPPORTED_DTYPES, Dim, TensorSpec

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]*$")
_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_input_spec(text: str) -> TensorSpec:
    """Parse ``NAME:DIMS[:DTYPE]`` where DIMS are ``x``-separated ints or symbolic names (``batch``)."""
    parts = text.rsplit(":", 2)
    if len(parts) < 2:
        raise InputError(f"--input '{text}': expected NAME:DIMS[:DTYPE], e.g. image:1x3x224x224:float32")
    if len(parts) == 3 and parts[2] in SUPPORTED_DTYPES:
        name, dims_text, dtype = parts
    elif len(parts) == 3 and not parts[2].replace("x", "").isdigit():
        raise InputError(f"--input '{text}': unknown dtype '{parts[2]}'", hint=f"use one of {', '.join(SUPPORTED_DTYPES)}")
    else:
        name, dims_text, dtype = text.rsplit(":", 1)[0], text.rsplit(":", 1)[1], "float32"
    if not _NAME.match(name):
        raise InputError(f"--input '{text}': '{name}' is not a valid tensor name")
    dims: list[Dim] = []
    for token in dims_text.split("x"):
        if token.isdigit() and int(token) > 0:
            dims.append(int(token))
        elif _SYMBOL.match(token):
            dims.append(token)
        else:
            raise InputError(f"--input '{text}': dimension '{token}' must be a positive integer or a name like 'batch'")
    return TensorSpec(name=name, shape=tuple(dims), dtype=dtype)
