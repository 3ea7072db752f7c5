"""The client side of :mod:`edgepack.exporters.rknn.worker`: one toolkit session in the ``rknn`` venv.

Sessions outlive the export that built them: the simulator can only run a model built in the same session, so
the host predictor of an artifact talks to the session that built it (:func:`session_for`). At most
:data:`MAX_SESSIONS` stay open (the oldest is closed first: each holds a toolkit process); all are closed when the
process exits.
"""

from __future__ import annotations

import atexit
import json
import select
import subprocess
from pathlib import Path
from typing import Any

from edgepack.errors import ExportError
from edgepack.exporters.rknn.env import RKNN_ENV
from edgepack.toolchains.isolated import python_for

WORKER = Path(__file__).with_name("worker.py")
BUILD_TIMEOUT_S = 1800
RUN_TIMEOUT_S = 600
MAX_SESSIONS = 3

_SESSIONS: dict[str, "RknnSession"] = {}
"""Artifact path -> the session that built it."""


class RknnSession:
    """A running worker process; :meth:`request` sends one JSON request and returns its reply."""

    def __init__(self, workdir: Path) -> None:
        python = python_for(RKNN_ENV)  # one line naming `edgepack toolchains install rknn` when missing
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "rknn.log"
        self._process = subprocess.Popen(
            [str(python), str(WORKER), str(self.log)], cwd=workdir, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )

    def request(self, payload: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        process = self._process
        if process.poll() is not None or process.stdin is None or process.stdout is None:
            raise ExportError(f"the RKNN-Toolkit2 worker is not running (exit {process.returncode}){self._log_tail()}")
        process.stdin.write(json.dumps(payload) + "\n")
        process.stdin.flush()
        ready, _, _ = select.select([process.stdout], [], [], timeout_s)
        if not ready:
            self.close()
            raise ExportError(f"RKNN-Toolkit2 {payload['op']} did not finish within {timeout_s:.0f} s")
        line = process.stdout.readline()
        if not line:
            code = process.wait()
            raise ExportError(f"the RKNN-Toolkit2 worker exited ({code}) during {payload['op']}{self._log_tail()}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise ExportError(f"RKNN-Toolkit2 {payload['op']}: {reply.get('error')}{self._log_tail()}")
        return reply

    def _log_tail(self) -> str:
        """The toolkit's last error line (``E ...``) from the session log, if any."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        errors = [line.strip() for line in lines if line.lstrip().startswith(("E ", "\x1b[1;31mE"))]
        return f" ({errors[-1][:300]})" if errors else ""

    def close(self) -> None:
        process = self._process
        if process.poll() is None:
            try:
                if process.stdin is not None:
                    process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                    process.stdin.flush()
                process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


def open_session(artifact_path: Path, workdir: Path) -> RknnSession:
    """A new session for the artifact at ``artifact_path`` (replacing one for the same path)."""
    key = str(artifact_path.resolve())
    if key in _SESSIONS:
        _SESSIONS.pop(key).close()
    while len(_SESSIONS) >= MAX_SESSIONS:
        _SESSIONS.pop(next(iter(_SESSIONS))).close()
    session = RknnSession(workdir)
    _SESSIONS[key] = session
    return session


def session_for(artifact_path: Path) -> RknnSession | None:
    return _SESSIONS.get(str(Path(artifact_path).resolve()))


@atexit.register
def _close_all() -> None:
    while _SESSIONS:
        _SESSIONS.popitem()[1].close()
