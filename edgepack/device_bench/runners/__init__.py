"""Benchmark runners: ``host`` (in-process) and ``ssh://user@host[:port]`` (on-device agent).

Pick one with :func:`runner_for_uri`; every runner implements :class:`Runner`.
"""

from edgepack.device_bench.runners.base import RUNNERS, Runner, RunnerError, runner_for_uri

__all__ = ["RUNNERS", "Runner", "RunnerError", "runner_for_uri"]
