"""Parsing ``--input``: ``NAME:1x3x224x224:float32`` into a :class:`TensorSpec`, and ``NAME:TYPE=VALUE``
(``sr:int=16000``, ``TYPE`` one of int, float, bool) into a :class:`ConstantInput`: a non-tensor ``forward``
argument frozen to a constant (TorchScript sources)."""

from __future__ import annotations

import math
import re

from edgepack.errors import InputError
from edgepack.models.source import SUPPORTED_DTYPES, ConstantInput, Dim, TensorSpec

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]*$")
_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONSTANT = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*):(?P<dtype>[a-z]+)=(?P<value>.*)$")
CONSTANT_DTYPES = ("int", "float", "bool")


def parse_input_spec(text: str) -> TensorSpec | ConstantInput:
    """Parse ``NAME:DIMS[:DTYPE]`` where DIMS are ``x``-separated ints or symbolic names (``batch``), or
    ``NAME:TYPE=VALUE`` for a constant argument."""
    if "=" in text:
        return parse_constant(text)
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


def parse_constant(text: str) -> ConstantInput:
    """Parse ``NAME:TYPE=VALUE``: ``sr:int=16000``, ``gain:float=0.5``, ``causal:bool=true``."""
    match = _CONSTANT.match(text)
    if match is None:
        raise InputError(f"--input '{text}': expected NAME:TYPE=VALUE for a constant argument, e.g. sr:int=16000")
    name, dtype, raw = match["name"], match["dtype"], match["value"].strip()
    if dtype not in CONSTANT_DTYPES:
        raise InputError(f"--input '{text}': unknown constant type '{dtype}'", hint=f"use one of {', '.join(CONSTANT_DTYPES)}")
    try:
        if dtype == "bool":
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            value: int | float | bool = raw.lower() in ("true", "1")
        else:
            value = int(raw) if dtype == "int" else float(raw)
    except ValueError:
        raise InputError(f"--input '{text}': '{raw}' is not {'an' if dtype == 'int' else 'a'} {dtype}") from None
    if dtype == "float" and not math.isfinite(value):
        raise InputError(f"--input '{text}': the value must be finite")
    return ConstantInput(name=name, dtype=dtype, value=value)  # type: ignore[arg-type]
