"""MNN's converter (MNNConvert) and post-training quantizer (quantized.out), run in a child process.

Both are the C++ tools the ``mnn`` wheel exposes as ``_tools.mnnconvert(argv)`` / ``_tools.mnnquant(argv)``.
They run in a child Python so their progress lines stay off the terminal and an abort (the tools call
``std::terminate`` on bad input) is a failed export, not a dead process. The wheel's own ``mnnconvert`` /
``mnnquant`` console wrappers are not used: they import a usage logger that reaches for the network (export never
does), and ``mnnquant``'s wrapper calls the binding with three strings where it takes one argv list.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from edgepack.errors import ExportError

_ERROR = re.compile(r"error|fail|can't|cannot|not support|terminate|what\(\)", re.IGNORECASE)
_NOISE = re.compile(r"^(The device supports:|MNN use )")
_LOG_PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\] *@? *:?\d*: *")
"""MNN's log-line prefix (``[01:16:35] :220: ``), dropped from the message."""
TIMEOUT_S = 3600


def _run(tool: str, argv: list[str], output: Path, what: str) -> str:
    """Run ``_tools.<tool>(argv)`` in a child; return its log; raise one-line :class:`ExportError` on failure."""
    output.unlink(missing_ok=True)
    code = f"import sys, _tools; _tools.{tool}(sys.argv[1:]); sys.stdout.flush()"
    try:
        done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, errors="replace",
                              timeout=TIMEOUT_S, check=False, cwd=output.parent)
    except subprocess.TimeoutExpired:
        raise ExportError(f"{what} did not finish within {TIMEOUT_S} s") from None
    log = (done.stdout or "") + (done.stderr or "")
    if done.returncode == 0 and output.exists() and output.stat().st_size > 0:
        return log
    raise ExportError(f"{what} failed: {_first_error(log, done.returncode)}")


def _first_error(log: str, returncode: int) -> str:
    """The tool's own message: its first error-looking line, else its last line, else the exit status."""
    lines = [_LOG_PREFIX.sub("", line.strip()) for line in log.replace("\r", "\n").splitlines() if line.strip()]
    lines = [line for line in lines if not _NOISE.match(line)] or lines
    errors = [line for line in lines if _ERROR.search(line)]
    message = errors[0] if errors else lines[-1] if lines else f"exit status {returncode}"
    if returncode < 0 or returncode > 128:
        message += f" (exit status {returncode})"
    return message[:300]


def mnnconvert(onnx: Path, mnn: Path, options: list[str]) -> str:
    """ONNX -> .mnn with MNNConvert ``options`` (``--fp16``, ``--weightQuantBits 8``, ...); returns its log."""
    argv = ["MNNConvert", "-f", "ONNX", "--modelFile", str(onnx.absolute()), "--MNNModel", str(mnn.absolute()),
            "--bizCode", "edgepack", *options]
    return _run("mnnconvert", argv, mnn, "MNNConvert (ONNX -> MNN)")


def mnnquant(src: Path, dst: Path, config: Path) -> str:
    """Post-training int8 quantization of ``src`` into ``dst`` with the JSON ``config``; returns its log."""
    argv = ["quantized.out", str(src.absolute()), str(dst.absolute()), str(config.absolute())]
    return _run("mnnquant", argv, dst, "MNN post-training quantization")


def mnn_to_json(mnn: Path, json_file: Path) -> str:
    """Dump a .mnn model to MNN's JSON form (ops, parameters, tensor names); returns the tool's log."""
    argv = ["MNNConvert", "-f", "MNN", "--modelFile", str(mnn.absolute()), "--JsonFile", str(json_file.absolute())]
    return _run("mnnconvert", argv, json_file, "MNNConvert (MNN -> JSON)")
