"""Writing a :class:`~edgepack.compress.recipe.Recipe` as a recipe TOML file (``edgepack export --recipe FILE``).

The standard library reads TOML but does not write it; recipes use a small subset (strings, booleans,
numbers, lists of strings, one level of tables, ``[[passes]]`` with inline option tables), written here.
Files are written to a temporary name and renamed, so a reader never sees half a recipe.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from edgepack._fs import write_atomic
from edgepack.compress.recipe import Recipe

_TOP_LEVEL = ("name", "description", "precision", "exclude")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write {value!r} to TOML")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    raise ValueError(f"cannot write {type(value).__name__} to TOML")


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def recipe_toml(recipe: Recipe, header: str = "") -> str:
    """The recipe as TOML text that :func:`edgepack.compress.recipe.load_recipe_file` reads back equal."""
    data = recipe.model_dump()
    lines = [f"# {line}" for line in header.splitlines()]
    for key in _TOP_LEVEL:
        lines.append(f"{key} = {_value(data[key])}")
    for spec in data["passes"]:
        lines += ["", "[[passes]]", f"name = {_value(spec['name'])}"]
        if spec["options"]:
            lines.append(f"options = {_value(spec['options'])}")
    for section, values in data.items():
        if isinstance(values, dict):
            lines += ["", f"[{section}]"]
            lines += [f"{_key(k)} = {_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


def write_recipe(recipe: Recipe, path: Path, header: str = "") -> Path:
    """Write ``recipe`` to ``path`` atomically and return the path."""
    return write_atomic(path, recipe_toml(recipe, header))
