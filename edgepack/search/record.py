"""Every trial a search measured, stored in the device-bench results database as one run of farm ``search``.

Each trial is a job ``(runner, model, target, RECIPE@rN)``: measured trials carry their
:class:`~edgepack.device_bench.config.BenchResult` and the provenance of their bundle, with the accuracy of
that rung (eval subset at rung 0, the whole eval set at rung 1); trials that could not be measured are jobs
``failed`` with the reason. Each trial is stored once: the journal notes what was stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from edgepack.models.source import ModelSource
from edgepack.search.trial import Trial

if TYPE_CHECKING:
    from edgepack.search.engine import SearchResult

FARM = "search"


def record_trials(db: str | None, result: "SearchResult", trials: Sequence[Trial], model: ModelSource, runner: str,
                  identity: dict[str, Any]) -> int | None:
    """Store ``trials`` (those of ``result`` not stored before) as one run; its id, or ``None`` when none."""
    from edgepack.farm.store import JobSpec, bundle_provenance, open_store

    fresh = list(trials)
    if not fresh:
        return None
    specs = [JobSpec(runner, model.name, model.uri, result.target, f"{t.name}@r{t.rung}", position)
             for position, t in enumerate(fresh)]
    config = {**identity, "out": str(result.out.resolve()), "constraints": vars(result.constraints)}
    with open_store(db) as store:
        run_id = store.start_run(FARM, config, "search", [(runner, result.target, runner)], specs)
        jobs = {job.spec.key: job for job in store.jobs(run_id)}
        for spec, trial in zip(specs, fresh):
            job = jobs[spec.key]
            store.job_attempt(job.id)
            bench = trial.bench_result()
            if trial.status != "ok" or bench is None or trial.bundle is None:
                store.job_done(job.id, "failed", trial.error or "not measured")
                continue
            provenance = replace(
                bundle_provenance(result.out / trial.bundle, result.target),
                accuracy_metric=trial.metric, accuracy=trial.value, accuracy_reference=trial.baseline,
                accuracy_max_drop=result.constraints.max_drop,
            )
            store.record_result(job.id, bench, provenance)
        store.finish_run(run_id)
    return run_id
