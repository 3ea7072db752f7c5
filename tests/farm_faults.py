"""A runner that misbehaves on chosen calls, for the farm's fault-injection tests (imported by the farm's
worker processes and Ray workers, so it stays light: no torch, no pytest).

``fault://NAME?state=DIR&on=1,2&mode=error|hang|kill|kill-farm|orphan`` counts its calls in ``DIR/calls``; on
the calls listed in ``on`` it raises a :class:`RunnerError` (``error``), sleeps forever (``hang``), SIGKILLs
its own process (``kill``) or its parent, the farm process (``kill-farm``, then exits; ``orphan``, then
goes on measuring as if nothing happened, an orphaned worker). Every other call measures the artifact for
real with the host runner.

Run as a script, ``python tests/farm_faults.py ARGS...`` is the ``edgepack`` CLI with this runner
registered (``fault://`` URIs in farm files) and, when ``$EDGEPACK_TEST_FARM_EXPORTS`` names a directory,
the farm's exports reused from there (tests export once, not once per CLI call).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from edgepack.device_bench.config import BenchConfig, BenchResult
from edgepack.device_bench.runners.base import Runner, RunnerError
from edgepack.exporters.base import Artifact
from edgepack.models.source import TensorSpec

SCHEME = "fault"
TARGET = "farm_faults:FaultRunner"


class FaultRunner(Runner):
    scheme = SCHEME
    option_names = ("state", "on", "mode")

    def __init__(self, uri: str, state: Path, on: set[int], mode: str) -> None:
        self._uri, self.state, self.on, self.mode = uri, state, on, mode

    @classmethod
    def from_uri(cls, uri: str, options: Mapping[str, str]) -> "FaultRunner":
        on = {int(n) for n in options.get("on", "").split(",") if n}
        return cls(uri.split("?")[0], Path(options["state"]), on, options.get("mode", "error"))

    @property
    def uri(self) -> str:
        return self._uri

    def calls(self) -> int:
        path = self.state / "calls"
        return int(path.read_text()) if path.exists() else 0

    def run(self, artifact: Artifact, config: BenchConfig, *, inputs: Sequence[TensorSpec] | None = None) -> BenchResult:
        from edgepack.device_bench.runners.host import HostRunner

        self.state.mkdir(parents=True, exist_ok=True)
        call = self.calls() + 1
        (self.state / "calls").write_text(str(call))
        (self.state / f"pid-{call}").write_text(str(os.getpid()))
        if call in self.on:
            if self.mode == "error":
                raise RunnerError(f"injected failure on call {call}")
            if self.mode == "hang":
                time.sleep(3600)
            if self.mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.mode == "kill-farm":
                os.kill(os.getppid(), signal.SIGKILL)
                os._exit(1)
            if self.mode == "orphan":
                os.kill(os.getppid(), signal.SIGKILL)
                time.sleep(0.5)  # the farm process is gone; measure anyway and try to answer it
        return replace(HostRunner().run(artifact, config, inputs=inputs), runner=self.uri)


def _cli(argv: Sequence[str]) -> None:
    import torch  # noqa: F401  (before anything that may import TensorFlow)

    from edgepack.farm import nightly
    from edgepack.device_bench.runners.base import RUNNERS

    RUNNERS[SCHEME] = TARGET
    exports = os.environ.get("EDGEPACK_TEST_FARM_EXPORTS")
    if exports:
        cache = nightly.FarmExports
        nightly.FarmExports = lambda root=None, *, reuse=False: cache(Path(exports), reuse=True)  # type: ignore[misc]
    from edgepack.cli import main

    sys.argv = ["edgepack", *argv]
    main()


if __name__ == "__main__":
    _cli(sys.argv[1:])
