"""On-device agent: ``python -m edgepack.device_bench.agent ARTIFACT_DIR --runtime R --config JSON``.

Runs on a Linux board with edgepack and the runtime installed (the SSH runner copies the artifact and
``ARTIFACT_DIR/artifact.json``, see :func:`edgepack.device_bench.runners.base.job_to_dict`). Measures it
with the host runner and prints exactly one line on stdout: the :class:`BenchResult` JSON, or
``{"error": "...", "type": "..."}`` with the error's exit code (1 for an unexpected failure). Anything
the runtime prints goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from edgepack.device_bench.config import BenchConfig, BenchResult
from edgepack.device_bench.runners.base import JOB_FILE, job_from_dict
from edgepack.errors import EdgepackError, InputError


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send file descriptor 1 to stderr while the runtime runs (native libraries print there too)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run_job(artifact_dir: Path, runtime: str, config: BenchConfig) -> BenchResult:
    """Read ``artifact_dir/artifact.json`` and measure the artifact on this machine."""
    from edgepack.device_bench.runners.host import HostRunner

    job_path = artifact_dir / JOB_FILE
    try:
        job = json.loads(job_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{job_path}: cannot read the job description: {exc}") from None
    artifact, inputs = job_from_dict(job, artifact_dir)
    if artifact.runtime != runtime:
        raise InputError(f"--runtime {runtime} does not match the artifact's runtime {artifact.runtime}")
    return HostRunner().run(artifact, config, inputs=inputs)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edgepack.device_bench.agent", description=__doc__.splitlines()[0])
    parser.add_argument("artifact_dir", type=Path)
    parser.add_argument("--runtime", required=True)
    parser.add_argument("--config", required=True, help="BenchConfig as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with _stdout_to_stderr():
            result = run_job(args.artifact_dir, args.runtime, BenchConfig.from_json(args.config))
    except EdgepackError as exc:
        print(json.dumps({"error": str(exc), "type": type(exc).__name__}), flush=True)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - reported as one JSON line, never a bare traceback
        print(json.dumps({"error": f"agent failed: {type(exc).__name__}: {exc}", "type": "internal"}), flush=True)
        return 1
    print(result.to_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
