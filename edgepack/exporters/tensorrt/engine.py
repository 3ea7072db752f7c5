"""Build and time the TensorRT engine on this host when it can: ``trtexec`` found and an NVIDIA GPU present.

The shipped bundle never contains an engine (engines are tied to the GPU, TensorRT and JetPack versions);
this only *measures*. On a Jetson the profile's exact ``trtexec`` command runs (DLA flags included); on another
NVIDIA GPU the DLA flags are dropped and the numbers are labelled as indicative, not the target's. Where
``trtexec`` or the GPU is missing the result says so, and nothing is guessed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TRTEXEC_CANDIDATES = ("trtexec", "/usr/src/tensorrt/bin/trtexec")
"""Where trtexec lives: on PATH, or JetPack's fixed location."""
GPU_MARKERS = ("/dev/nvidia0", "/dev/nvhost-ctrl-gpu")
"""Device nodes of a discrete NVIDIA GPU / a Jetson's integrated GPU."""
JETSON_MARKER = "/etc/nv_tegra_release"
DLA_FLAGS = ("--useDLACore", "--allowGPUFallback")
BUILD_TIMEOUT_S = 600.0

_SUMMARY = re.compile(r"\]\s*(?P<name>Latency|GPU Compute Time|Enqueue Time|H2D Latency|D2H Latency):\s*(?P<body>.*)$")
_FIELD = re.compile(r"(?P<key>min|max|mean|median|percentile\((?P<pct>[0-9.]+)%\))\s*=?\s*(?P<value>[0-9.eE+-]+)\s*ms")
_THROUGHPUT = re.compile(r"\]\s*Throughput:\s*(?P<value>[0-9.eE+-]+)\s*qps")
_DEVICE = re.compile(r"\]\s*Selected Device:\s*(?P<value>.+?)\s*$")
_VERSION = re.compile(r"\]\s*TensorRT version:\s*(?P<value>\S+)")


def parse_trtexec_log(text: str) -> dict[str, Any]:
    """The ``=== Performance summary ===`` of a trtexec log: throughput and each latency line's statistics (ms)."""
    summary: dict[str, Any] = {}
    for line in text.splitlines():
        if (match := _THROUGHPUT.search(line)) is not None:
            summary["throughput_qps"] = float(match["value"])
        elif (match := _DEVICE.search(line)) is not None:
            summary["device"] = match["value"]
        elif (match := _VERSION.search(line)) is not None:
            summary["tensorrt"] = match["value"]
        elif (match := _SUMMARY.search(line)) is not None:
            stats = {}
            for field in _FIELD.finditer(match["body"]):
                key = f"p{float(field['pct']):g}" if field["pct"] else field["key"]
                stats[key] = float(field["value"])
            if stats:
                summary[match["name"].lower().replace(" ", "_") + "_ms"] = stats
    return summary


def find_trtexec() -> str | None:
    for candidate in TRTEXEC_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def gpu_present() -> bool:
    return any(Path(marker).exists() for marker in GPU_MARKERS)


def local_command(command: Sequence[str], trtexec: str, *, on_jetson: bool) -> list[str]:
    """The device command adapted to this host: its trtexec path, and no DLA flags off a Jetson."""
    adapted = [trtexec, *command[1:]]
    if not on_jetson:
        adapted = [arg for arg in adapted if not arg.startswith(DLA_FLAGS)]
    return adapted


def build_and_time(workdir: Path, command: Sequence[str], *, trtexec: str | None = None, gpu: bool | None = None,
                   jetson: bool | None = None, timeout_s: float = BUILD_TIMEOUT_S) -> dict[str, Any]:
    """Run ``command`` (the profile's trtexec build) in ``workdir`` if this host can; the parsed timings or why not.

    ``trtexec``, ``gpu`` and ``jetson`` are detected when ``None``. The engine and timing files it writes are
    removed afterwards: only the numbers are kept."""
    trtexec = trtexec or find_trtexec()
    if trtexec is None:
        return {"built_here": False, "reason": "not measurable here: trtexec is not installed (TensorRT)"}
    if not (gpu_present() if gpu is None else gpu):
        return {"built_here": False, "reason": "not measurable here: no NVIDIA GPU on this host"}
    jetson = Path(JETSON_MARKER).exists() if jetson is None else jetson
    argv = local_command(command, trtexec, on_jetson=jetson)
    try:
        done = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"built_here": False, "reason": f"trtexec did not finish within {timeout_s:g} s"}
    except OSError as exc:
        return {"built_here": False, "reason": f"trtexec could not start: {exc}"}
    finally:
        for leftover in ("model.engine", "times.json"):
            (workdir / leftover).unlink(missing_ok=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"built_here": False, "reason": f"trtexec failed (exit {done.returncode}): {tail[0][:300]}"}
    summary = parse_trtexec_log(done.stdout)
    if "latency_ms" not in summary:
        return {"built_here": False, "reason": "trtexec finished without a performance summary"}
    note = ("timed on the target (Jetson)" if jetson else
            "timed on this host's GPU without the DLA flags: indicative only, not the target device")
    return {"built_here": True, "on_target": jetson, "command": argv, "note": note, **summary}
