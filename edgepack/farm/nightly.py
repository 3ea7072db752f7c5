"""The device farm: ``farm.toml`` -> jobs -> export -> bench on each device -> results database.

A job is (device, model, target, recipe): the model is exported for the target with that one recipe
through :func:`edgepack.api.export` (once per run and key, :class:`FarmExports`), then benched on the
device's runner by an executor (:mod:`edgepack.farm.executors`), and its result is committed in
its own transaction (:meth:`Store.record_result`).

Devices are exclusive: each device's jobs run one after the other in its own loop (one thread here,
one worker process or Ray resource there). Faults:

- an attempt longer than ``[farm] timeout_s`` is killed; a failed attempt is retried ``retries``
  times, waiting ``backoff_s``, then twice that, ...;
- a device whose ``offline_after`` consecutive jobs failed is marked offline; its remaining jobs are
  recorded as ``skipped`` with the reason, never dropped;
- a deterministic refusal (unsupported runtime, bad bundle) or a failed export fails only that job,
  without retries, and does not count against the device;
- a device whose job failed (retries spent) is marked ``failing`` with that error until one of its jobs
  succeeds; every job without a result makes the report show its device red with the last error and
  ``farm regress`` exit 1 naming it;
- SIGINT/SIGTERM (:class:`KeyboardInterrupt`/:class:`~edgepack.errors.Terminated` in the farm process)
  stops the device loops, kills the workers and marks the run ``interrupted`` (its running jobs back to
  ``pending``) before the interruption propagates;
- ``resume=True`` continues the last unfinished run of the same farm.toml (the farm process died, or was
  interrupted): finished jobs are kept, interrupted ones run again.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepack._fs import make_temp_dir, sweep_stale
from edgepack.device_bench.runners.base import split_uri
from edgepack.errors import EdgepackError, ExportError, Terminated
from edgepack.farm.config import DeviceSpec, FarmConfig, ModelSpec
from edgepack.farm.executors import AttemptError, BenchTask, Executor, LocalExecutor
from edgepack.farm.store import JobRow, JobSpec, Provenance, Store, bundle_provenance

Progress = Callable[[str], None]
EXPORTS_PREFIX = "edgepack-farm-exports-"
"""Scratch folders of a farm run's exports in the system temp dir (``edgepack-farm-exports-<pid>.<random>``)."""
STOP_WAIT_S = 15.0
"""How long an interrupted farm waits for its device loops to notice (their workers are killed first)."""


def plan_jobs(config: FarmConfig) -> list[JobSpec]:
    """Every (enabled device, model, recipe of the device's target), in farm.toml order per device."""
    jobs: list[JobSpec] = []
    for device in config.enabled_devices:
        position = 0
        for model in config.models:
            for recipe in config.target(device.profile).recipes:
                jobs.append(JobSpec(device.id, model.name, model.source, device.profile, recipe, position))
                position += 1
    return jobs


def runner_label(uri: str) -> str:
    """The runner URI as stored (query options such as key paths dropped)."""
    scheme, rest, _ = split_uri(uri)
    return f"{scheme}://{rest}" if rest else scheme


@dataclass(frozen=True)
class Exported:
    bundle: Path
    provenance: Provenance


class FarmExports:
    """Exports by (model, target, recipe), each done once; exports run one at a time.

    ``root`` keeps the bundles (default: a temp dir removed by :meth:`close`). With ``reuse`` a bundle
    already in ``root`` from an earlier run is verified and used instead of exporting again (a farm
    host that re-runs the same toolchain). A failed export is remembered too, so the other devices'
    jobs of that key fail at once with the same reason.
    """

    def __init__(self, root: Path | None = None, *, reuse: bool = False) -> None:
        self._owned = root is None
        self.reuse = reuse
        if root is None:
            sweep_stale(Path(tempfile.gettempdir()), EXPORTS_PREFIX)  # left by a killed farm run
        self.root = Path(root) if root is not None else make_temp_dir(EXPORTS_PREFIX)
        self._done: dict[tuple[Any, ...], Exported | EdgepackError] = {}
        self._lock = threading.Lock()
        self.exports = 0
        """How many exports actually ran (cache misses)."""

    def get(self, model: ModelSpec, target: str, recipe: str) -> Exported:
        key = (model.source, model.calib, model.eval, model.max_drop, target, recipe)
        with self._lock:
            if key not in self._done:
                try:
                    self._done[key] = self._export(model, target, recipe)
                except EdgepackError as exc:
                    self._done[key] = exc
            outcome = self._done[key]
        if isinstance(outcome, EdgepackError):
            raise outcome
        return outcome

    def _export(self, model: ModelSpec, target: str, recipe: str) -> Exported:
        from edgepack import api

        digest = hashlib.sha256(repr((model.source, model.calib, model.eval, model.max_drop)).encode()).hexdigest()
        out = self.root / f"{target}--{recipe}--{digest[:16]}"
        existing = sorted(out.glob("*.edgepack"))
        if self.reuse and existing:
            from edgepack.bundle.verify import verify_bundle

            verify_bundle(existing[0])
            return Exported(existing[0], bundle_provenance(existing[0], target))
        self.exports += 1
        result = api.export(model.source, [target], calib=model.calib, eval_data=model.eval, max_drop=model.max_drop,
                            out=out, name=model.name, recipe_chain=[recipe])
        entry = result.manifest["targets"][target]
        if entry.get("status") != "ok" or not entry.get("artifact"):
            attempts = entry.get("attempts") or [{}]
            why = entry.get("error") or attempts[-1].get("reason") or entry.get("status")
            raise ExportError(f"export of {model.name} for {target} with recipe {recipe} failed: {why}")
        return Exported(result.bundle, bundle_provenance(result.bundle, target))

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)


@dataclass(frozen=True)
class FarmRun:
    """A finished (or resumed and finished) run and its jobs."""

    run_id: int
    resumed: bool
    jobs: tuple[JobRow, ...]
    exports: int

    def count(self, status: str) -> int:
        return sum(job.status == status for job in self.jobs)

    @property
    def ok(self) -> bool:
        return all(job.status == "ok" for job in self.jobs)


class _DeviceLoop:
    """Runs one device's queue: retries, backoff, failing/offline marking; stops when ``stop`` is set."""

    def __init__(self, device: DeviceSpec, jobs: Sequence[JobRow], *, config: FarmConfig, store: Store,
                 executor: Executor, exports: FarmExports, progress: Progress, sleep: Callable[[float], None],
                 offline_reason: str | None, stop: threading.Event | None = None) -> None:
        self.device, self.jobs, self.config, self.store = device, jobs, config, store
        self.executor, self.exports, self.progress, self.sleep = executor, exports, progress, sleep
        self.offline_reason = offline_reason
        self.stop = stop or threading.Event()
        self.models = {m.name: m for m in config.models}

    def run(self) -> None:
        if self.offline_reason is not None:
            self.store.set_device_status(self.device.id, "offline", self.offline_reason)
        consecutive = 0
        for job in self.jobs:
            if self.stop.is_set():
                return
            name = f"{self.device.id} {job.spec.model}/{job.spec.target}/{job.spec.recipe}"
            if self.offline_reason is not None:
                self.store.job_done(job.id, "skipped", f"device offline: {self.offline_reason}")
                self.progress(f"{name}: skipped (device offline)")
                continue
            outcome = self._job(job)
            if outcome == "interrupted":
                return
            self.progress(f"{name}: {outcome}")
            if outcome.startswith("failed"):
                consecutive += 1
                if consecutive >= self.config.farm.offline_after:
                    self.offline_reason = f"{consecutive} consecutive jobs failed; last: {outcome}"
                    self.store.set_device_status(self.device.id, "offline", self.offline_reason)
                else:
                    self.store.set_device_status(self.device.id, "failing", f"{job.spec.model}/{job.spec.target}/"
                                                                            f"{job.spec.recipe}: {outcome}")
            elif outcome.startswith("ok"):
                if consecutive:
                    self.store.set_device_status(self.device.id, "online", None)
                consecutive = 0

    def _job(self, job: JobRow) -> str:
        """Run one job to its end; returns 'ok ...', 'failed ...' (counts against the device) or 'error ...'."""
        spec = job.spec
        try:
            exported = self.exports.get(self.models[spec.model], spec.target, spec.recipe)
        except EdgepackError as exc:
            self.store.job_done(job.id, "failed", f"export: {exc}")
            return f"error (export: {exc})"
        from edgepack.device_bench.runners.base import RUNNERS

        task = BenchTask(str(exported.bundle), spec.target, self.device.runner, self.device.options,
                         self.config.bench_config.to_dict(), dict(RUNNERS))
        settings = self.config.farm
        error = ""
        for attempt in range(settings.retries + 1):
            if self.stop.is_set():
                return "interrupted"
            number = self.store.job_attempt(job.id)
            try:
                result = self.executor.run(self.device, task, settings.timeout_s)
            except AttemptError as exc:
                if self.stop.is_set():  # the farm is stopping and killed the worker: not the device's fault
                    return "interrupted"
                error = f"attempt {number}: {exc.kind}: {exc}"
                self.store.job_error(job.id, error)
                if attempt < settings.retries:
                    self.sleep(settings.backoff_s * 2**attempt)
                continue
            except EdgepackError as exc:
                self.store.job_done(job.id, "failed", f"attempt {number}: {exc}")
                return f"error ({exc})"
            self.store.record_result(job.id, result, exported.provenance)
            tail = f"p99 {result.p99:.3f} ms" if result.p99 is not None else "p99 n/a"
            return f"ok (p50 {result.p50:.3f} ms, {tail}, attempt {number})"
        self.store.job_done(job.id, "failed", error)
        return f"failed ({error})"


def run_farm(
    config: FarmConfig,
    store: Store,
    *,
    executor: Executor | None = None,
    resume: bool = False,
    exports: FarmExports | None = None,
    progress: Progress = lambda message: None,
    sleep: Callable[[float], None] = time.sleep,
) -> FarmRun:
    """Run every job of ``config`` (or, with ``resume``, the rest of its last unfinished run).

    An interruption (:class:`KeyboardInterrupt`, :class:`~edgepack.errors.Terminated`) stops the device
    loops and their workers, marks the run ``interrupted`` and propagates."""
    executor = executor or LocalExecutor()
    config_data = config.to_dict()
    devices = [(d.id, d.profile, runner_label(d.runner)) for d in config.enabled_devices]
    run_id = store.unfinished_run(config.farm.name, config_data) if resume else None
    resumed = run_id is not None
    if run_id is not None:
        store.resume_run(run_id, devices)
        progress(f"resuming run {run_id}")
    else:
        run_id = store.start_run(config.farm.name, config_data, executor.name, devices, plan_jobs(config))
        progress(f"run {run_id} started")
    pending: dict[str, list[JobRow]] = {}
    for job in store.jobs(run_id, status="pending"):
        pending.setdefault(job.spec.device, []).append(job)
    cache = exports or FarmExports()
    failures: list[BaseException] = []
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        unavailable = executor.start(config.enabled_devices)
        loops = [
            _DeviceLoop(config.device(device_id), jobs, config=config, store=store, executor=executor, exports=cache,
                        progress=progress, sleep=sleep, offline_reason=unavailable.get(device_id), stop=stop)
            for device_id, jobs in pending.items()
        ]

        def guarded(loop: _DeviceLoop) -> None:
            try:
                loop.run()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the farm process below
                if not stop.is_set():
                    failures.append(exc)

        threads = [threading.Thread(target=guarded, args=(loop,), name=f"farm-{loop.device.id}", daemon=True)
                   for loop in loops]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    except (KeyboardInterrupt, Terminated):
        stop.set()
        executor.close()  # kills the workers: the device loops' attempts end at once
        deadline = time.monotonic() + STOP_WAIT_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        try:
            store.interrupt_run(run_id)
        except EdgepackError as exc:  # the interruption, not the bookkeeping, decides the exit
            progress(f"run {run_id}: could not be marked interrupted: {exc}")
        else:
            progress(f"run {run_id} interrupted (`edgepack farm run --resume` continues it)")
        raise
    finally:
        executor.close()
        if exports is None:
            cache.close()
    if failures:
        raise failures[0]  # the run stays unfinished: `--resume` continues it
    store.finish_run(run_id)
    return FarmRun(run_id, resumed, tuple(store.jobs(run_id)), cache.exports)
