"""``--eval module:function``: the user's own evaluation, given a predictor, returning one number.

The function is called as ``function(predict) -> float`` where ``predict(inputs: dict[str, np.ndarray]) ->
dict[str, np.ndarray]`` runs one batch (input names as the source's, outputs by name) on the fp32 source
or on a candidate artifact. Higher is better; the gate compares the two values with ``--max-drop``. The
function may load its own data (a detection mAP, a WER, a retrieval recall). Like a factory source it is
user code and runs in this process.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgepack.errors import DataError

MetricFunction = Callable[[Callable[[dict[str, Any]], dict[str, Any]]], float]
_SPEC = re.compile(r"^(?P<module>[^:]+):(?P<function>[A-Za-z_][A-Za-z0-9_]*)$")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def is_metric_function(text: str) -> bool:
    """``file.py:function`` or ``package.module:function`` (and not an existing data path)."""
    match = _SPEC.match(text)
    if match is None or Path(text).exists():
        return False
    module = match.group("module")
    return module.endswith(".py") or bool(_DOTTED.match(module))


def load_metric_function(text: str) -> tuple[str, MetricFunction]:
    """(display name, callable) for ``text``; :class:`DataError` when it cannot be imported or is not callable."""
    match = _SPEC.match(text)
    if match is None:
        raise DataError(f"--eval {text}: expected FILE.py:function or package.module:function")
    module_name, function_name = match.group("module"), match.group("function")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise DataError(f"--eval {text}: {path} not found")
            spec = importlib.util.spec_from_file_location(f"edgepack_eval_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}", path)
            if spec is None or spec.loader is None:
                raise DataError(f"--eval {text}: cannot import {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            try:
                spec.loader.exec_module(module)
            finally:
                sys.modules.pop(spec.name, None)
        else:
            module = importlib.import_module(module_name)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - user code
        raise DataError(f"--eval {text}: importing it failed: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise DataError(f"--eval {text}: '{function_name}' is not a function in {module_name}")
    return f"{Path(module_name).stem if module_name.endswith('.py') else module_name}:{function_name}", function
