"""Where farm jobs run: :class:`LocalExecutor` (one worker process per device on this machine) or
:class:`RayExecutor` (Ray tasks that request the device's custom resource, ``{"device:ID": 1}``).

Both take one :class:`BenchTask` at a time per device and either return its
:class:`~edgepack.device_bench.config.BenchResult`, raise :class:`AttemptError` (timeout, crashed
worker, unreachable device: worth a retry), or raise the task's :class:`~edgepack.errors.EdgepackError`
(a deterministic refusal such as an unsupported runtime: retrying cannot help). The worker side is
:func:`execute`, the same function in both executors.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgepack import errors
from edgepack.device_bench.config import BenchConfig, BenchResult
from edgepack.errors import EdgepackError
from edgepack.farm.config import DeviceSpec
from edgepack.signals import raise_if_interrupted

WORKER_START_S = 120.0
"""Bound of a local worker's start (interpreter and imports), not counted in the job's timeout."""


class AttemptError(Exception):
    """One attempt failed in a way a retry may fix (timeout, crashed worker, unreachable device)."""

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class BenchTask:
    """Bench ``target`` of the bundle at ``bundle`` with ``runner``."""

    bundle: str
    target: str
    runner: str
    options: Mapping[str, str] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    runners: Mapping[str, str] = field(default_factory=dict)
    """Runner registrations (scheme -> ``module:Class``) of the farm process, applied in the worker."""

    def to_dict(self) -> dict[str, Any]:
        return {k: dict(v) if isinstance(v, Mapping) else v for k, v in asdict(self).items()}


def execute(task: Mapping[str, Any], bundle_dir: str | None = None) -> dict[str, Any]:
    """Worker side: bench one task; returns ``{"result": ...}`` or ``{"error", "type", "transient"}``."""
    from edgepack.device_bench.bench import bench_bundle
    from edgepack.device_bench.runners.base import RUNNERS, RunnerError

    RUNNERS.update(task.get("runners") or {})
    try:
        [result] = bench_bundle(Path(bundle_dir or task["bundle"]), task["target"], task["runner"],
                                BenchConfig.from_dict(dict(task["config"])), runner_options=task.get("options"))
        return {"result": result.to_dict()}
    except RunnerError as exc:
        return {"error": str(exc), "type": type(exc).__name__, "transient": True}
    except EdgepackError as exc:
        return {"error": str(exc), "type": type(exc).__name__, "transient": False}
    except Exception as exc:  # noqa: BLE001 - a runner bug is reported, and retried like a device fault
        raise_if_interrupted()  # a runtime may have rewrapped SIGINT/SIGTERM
        return {"error": f"{type(exc).__name__}: {exc}", "type": "internal", "transient": True}


def _reply(reply: Mapping[str, Any]) -> BenchResult:
    if "result" in reply:
        return BenchResult.from_dict(reply["result"])
    if reply.get("transient"):
        raise AttemptError(str(reply["error"]), kind="runner")
    cls = getattr(errors, str(reply.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, EdgepackError)):
        cls = EdgepackError
    raise cls(str(reply["error"]))


class Executor(Protocol):
    name: str

    def start(self, devices: Sequence[DeviceSpec]) -> dict[str, str]:
        """Prepare workers; returns the devices that cannot run jobs here, with the reason."""

    def run(self, device: DeviceSpec, task: BenchTask, timeout_s: float) -> BenchResult:
        """Run one attempt on ``device`` (one at a time per device)."""

    def close(self) -> None:
        """Stop the workers; in-flight :meth:`run` calls end with :class:`AttemptError`. Idempotent."""


# --------------------------------------------------------------------------------------------------
# Local: one worker process per device
# --------------------------------------------------------------------------------------------------


ORPHAN_CHECK_S = 1.0
"""How often a local worker checks that the farm process that started it is still there."""


def _exit_when_orphaned(farm_pid: int) -> None:
    """Watchdog thread of a local worker: the farm process died (it is no longer our parent), so nobody
    will read what this worker measures; end it at once, quietly (no traceback, no output)."""
    while True:
        time.sleep(ORPHAN_CHECK_S)
        if os.getppid() != farm_pid:
            os._exit(0)


def _worker_main(conn: Any, farm_pid: int | None = None) -> None:
    """Entry point of a local device worker: answer tasks until the pipe closes.

    When the farm process is gone (killed, or it stopped the farm) the worker exits quietly, without a
    traceback: within :data:`ORPHAN_CHECK_S` (a watchdog thread), before its next task (EOF) or when its
    answer cannot be sent (broken pipe). Ctrl-C reaches the whole process group; the farm process handles
    it and stops the workers, so here it ends the worker quietly too.
    """
    if farm_pid is not None:
        threading.Thread(target=_exit_when_orphaned, args=(farm_pid,), name="orphan-watchdog", daemon=True).start()
    try:
        conn.send("ready")
        while True:
            task = conn.recv()
            if task is None:
                return
            conn.send(execute(task))
    except (EOFError, OSError, KeyboardInterrupt):  # BrokenPipeError, ConnectionResetError: orphaned
        return


class _Worker:
    """A long-lived process that runs one device's jobs; replaced when it hangs or dies."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.process: Any = None
        self.conn: Any = None
        self.closed = False
        """Set by :meth:`close`: no new worker starts (the farm is stopping)."""
        self.busy = False
        """An attempt is in flight (:meth:`close` then kills the worker at once: the farm was interrupted)."""

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(target=_worker_main, args=(child, os.getpid()), name=f"edgepack-farm-{self.device_id}",
                                  daemon=True)
        process.start()
        child.close()
        self.process, self.conn = process, parent
        try:
            ready = parent.poll(WORKER_START_S) and parent.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            code = self.stop()
            raise AttemptError(f"device worker did not start (exit code {code})", kind="crash")

    def stop(self) -> int | None:
        """Kill the worker; returns its exit code."""
        process, conn = self.process, self.conn
        self.process = self.conn = None
        if process is None:
            return None
        if process.is_alive():
            process.kill()
        process.join(10)
        if conn is not None:
            conn.close()
        return process.exitcode

    def call(self, task: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        if self.closed:
            raise AttemptError("the farm is stopping", kind="stopped")
        if self.process is None or not self.process.is_alive():
            self.stop()
            self._start()
            if self.closed:  # closed while the worker started
                self.stop()
                raise AttemptError("the farm is stopping", kind="stopped")
        conn = self.conn
        self.busy = True
        try:
            conn.send(task)
            if not conn.poll(timeout_s):
                self.stop()
                raise AttemptError(f"timed out after {timeout_s:g} s (worker killed)", kind="timeout")
            return conn.recv()
        except (EOFError, OSError, ValueError, AttributeError):  # died, or killed by close() (conn closed/None)
            code = self.stop()
            raise AttemptError(f"device worker died (exit code {code})", kind="crash") from None
        finally:
            self.busy = False

    def close(self) -> None:
        """Let an idle worker exit, kill a busy one; no worker starts afterwards. Idempotent."""
        self.closed = True
        process, conn = self.process, self.conn
        if not self.busy and process is not None and process.is_alive() and conn is not None:
            try:
                conn.send(None)
                process.join(5)
            except (OSError, ValueError):
                pass
        self.stop()


class LocalExecutor:
    """One worker process per device on this machine; a hung or dead worker is killed and replaced."""

    name = "local"

    def __init__(self) -> None:
        self._workers: dict[str, _Worker] = {}

    def start(self, devices: Sequence[DeviceSpec]) -> dict[str, str]:
        self._workers = {d.id: _Worker(d.id) for d in devices}
        return {}

    def run(self, device: DeviceSpec, task: BenchTask, timeout_s: float) -> BenchResult:
        return _reply(self._workers[device.id].call(task.to_dict(), timeout_s))

    def close(self) -> None:
        for worker in self._workers.values():
            worker.close()


# --------------------------------------------------------------------------------------------------
# Ray: device custom resources
# --------------------------------------------------------------------------------------------------


def pack_bundle(bundle: Path) -> bytes:
    """The bundle directory as an uncompressed tar (shipped to Ray workers on other hosts)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(bundle, arcname=bundle.name)
    return buffer.getvalue()


def _ray_execute(task: dict[str, Any], bundle_tar: bytes) -> dict[str, Any]:
    """Ray task body: unpack the bundle into a temp dir on this node and run :func:`execute`."""
    scratch = Path(tempfile.mkdtemp(prefix="edgepack-farm-"))
    try:
        with tarfile.open(fileobj=io.BytesIO(bundle_tar), mode="r") as archive:
            archive.extractall(scratch, filter="data")
        return execute(task, str(scratch / Path(task["bundle"]).name))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class RayExecutor:
    """Jobs as Ray tasks requesting ``{"device:ID": 1}``; each farm host advertises its devices, e.g.
    ``ray start --address HEAD --resources '{"device:pixel8-01": 1}'``."""

    def __init__(self, address: str, *, runtime_env: Mapping[str, Any] | None = None) -> None:
        self.address = address
        self.name = f"ray:{address}"
        self.runtime_env = dict(runtime_env or {})
        self._bundles: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._remote: Any = None

    def start(self, devices: Sequence[DeviceSpec]) -> dict[str, str]:
        try:
            import ray
        except ImportError:
            raise errors.UnsupportedError("--ray needs Ray", hint="pip install 'edgepack[farm]'") from None
        try:
            ray.init(address=self.address, runtime_env=self.runtime_env or None, log_to_driver=False,
                     configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise errors.InputError(f"--ray {self.address}: cannot connect: {exc}") from None
        available = ray.cluster_resources()
        self._remote = ray.remote(num_cpus=0, max_retries=0)(_ray_execute)
        return {d.id: f"no Ray node advertises resource '{d.resource}'" for d in devices if available.get(d.resource, 0) < 1}

    def _bundle_ref(self, bundle: str) -> Any:
        import ray

        with self._lock:
            if bundle not in self._bundles:
                self._bundles[bundle] = ray.put(pack_bundle(Path(bundle)))
            return self._bundles[bundle]

    def run(self, device: DeviceSpec, task: BenchTask, timeout_s: float) -> BenchResult:
        import ray
        from ray.exceptions import GetTimeoutError, RayError

        ref = self._remote.options(resources={device.resource: 1}).remote(task.to_dict(), self._bundle_ref(task.bundle))
        ready, _ = ray.wait([ref], timeout=timeout_s)
        if not ready:
            ray.cancel(ref, force=True)
            raise AttemptError(f"timed out after {timeout_s:g} s (Ray task cancelled)", kind="timeout")
        try:
            reply = ray.get(ref)
        except GetTimeoutError:
            raise AttemptError(f"timed out after {timeout_s:g} s", kind="timeout") from None
        except RayError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AttemptError(f"Ray task failed: {type(exc).__name__}: {first}", kind="crash") from None
        return _reply(reply)

    def close(self) -> None:
        import ray

        self._bundles.clear()
        ray.shutdown()
