"""Running the TFLite conversion worker (:mod:`edgepack.exporters.tflite.worker`) in a subprocess and
turning what it printed into one line.

The worker runs in its own session with a quiet, offline, GPU-less environment; its stdout and stderr
go to ``rundir/worker.log``; it reports through a JSON result file. A timed-out worker is killed with
everything it started.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKER_MODULE = "edgepack.exporters.tflite.worker"
EXIT_MISSING = 3


@dataclass(frozen=True)
class WorkerOutcome:
    """What one worker run produced."""

    ok: bool
    files: dict[str, str] = field(default_factory=dict)
    """Variant name (``fp32``, ``int8``, ...) -> path of the .tflite file written for it."""
    notes: tuple[str, ...] = ()
    reason: str = ""
    missing: bool = False
    log: Path | None = None


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Failure))(?::\s*(.*))?$")
_NOISE = (
    "cudart_stub",
    "absl::InitializeLog",
    "Could not find cuda",
    "oneDNN custom operations",
    "This TensorFlow binary is optimized",
    "To enable the following instructions",
    "rebuild TensorFlow with the appropriate compiler flags",
)
_GENERIC_ONNX2TF = (
    "The trace log is below",
    "Read this and deal with it",
    "input_onnx_file_path:",
    "onnx_op_name:",
    "onnx_op_type:",
    "Alternatively, if the input OP has a dynamic dimension",
    "Also, for models that include NonMaxSuppression",
    "https://github.com/PINTO0309",
    "Traceback (most recent call last)",
    "converter exited with status",
    "If the input OP of ONNX before conversion is NHWC",
    "use the -kt or -kat option",
    "try the -onwdt option",
)


def _clean_lines(text: str) -> list[str]:
    lines = (_ANSI.sub("", line).strip() for line in text.splitlines())
    return [line for line in lines if line and not any(noise in line for noise in _NOISE)]


def summarize_failure(output: str, fallback: str = "") -> str:
    """The most informative single line of a failed conversion's output.

    Combines the last specific onnx2tf ``ERROR:`` line and the last Python exception line
    (``SomeError: message``), adds the ONNX node onnx2tf names as failing, and falls back to
    ``fallback``, then to the last non-noise line.
    """
    lines = _clean_lines(output)
    exception = next((line for line in reversed(lines) if _is_exception_line(line)), "")
    specific, node = "", ""
    for line in reversed(lines):
        if not line.startswith("ERROR:"):
            continue
        message = line[len("ERROR:") :].strip()
        if not node and message.startswith("onnx_op_name:"):
            node = message[len("onnx_op_name:") :].strip()
        elif not specific and message and not any(generic in message for generic in _GENERIC_ONNX2TF):
            specific = message
    parts = [p for p in (specific, exception) if p]
    summary = f"{parts[0]} ({parts[1]})" if len(parts) == 2 else (parts[0] if parts else fallback)
    if not summary:
        summary = lines[-1] if lines else "no output"
    if node:  # the node is kept whole: it is what a user searches the graph for
        return f"{summary[: max(400 - len(node) - 13, 120)]} [ONNX node {node}]"
    return summary[:400]


def last_exception(output: str) -> str | None:
    """The last ``SomeError: message`` line of a log (e.g. a quantized variant onnx2tf only warned about)."""
    return next((line[:300] for line in reversed(_clean_lines(output)) if _is_exception_line(line)), None)


def _is_exception_line(line: str) -> bool:
    match = _EXCEPTION_LINE.match(line)
    return bool(match) and match.group(1) != "SystemExit" and bool((match.group(2) or "").strip())


def _worker_env() -> dict[str, str]:
    """Environment of a worker: edgepack importable, quiet TensorFlow, no GPU, offline hubs."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(proxy, None)
    return env


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill the worker and anything it started (it runs in its own session, so its group id is its pid)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    process.wait()


def run_worker(mode: str, request: dict[str, Any], rundir: Path, timeout_s: float) -> WorkerOutcome:
    """Run ``python -m edgepack.exporters.tflite.worker MODE request.json`` in ``rundir``.

    stdout and stderr go to ``rundir/worker.log``; the outcome's ``reason`` is one line.
    """
    rundir.mkdir(parents=True, exist_ok=True)
    request_path, result_path, log_path = rundir / "request.json", rundir / "result.json", rundir / "worker.log"
    result_path.unlink(missing_ok=True)
    request_path.write_text(json.dumps({**request, "result": str(result_path)}, indent=1), encoding="utf-8")
    command = [sys.executable, "-m", WORKER_MODULE, mode, str(request_path)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=rundir, env=_worker_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            returncode = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            return WorkerOutcome(False, reason=f"timed out after {timeout_s:g} s", log=log_path)
        except BaseException:  # SIGINT/SIGTERM in the parent: the worker (own session) must not outlive it
            _kill_group(process)
            raise
    output = log_path.read_text(encoding="utf-8", errors="replace")
    result = _read_result(result_path)
    if result.get("ok") and returncode == 0:
        return WorkerOutcome(True, result.get("files", {}), tuple(result.get("notes", ())), log=log_path)
    if result.get("missing") or returncode == EXIT_MISSING:
        reason = str(result.get("error", "converter not installed"))
        return WorkerOutcome(False, reason=reason, missing=True, log=log_path)
    fallback = str(result.get("error") or _describe_returncode(returncode))
    return WorkerOutcome(False, reason=summarize_failure(output, fallback), log=log_path)


def _read_result(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _describe_returncode(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"worker killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"worker killed by signal {-returncode}"
    return f"worker exited with status {returncode}"
