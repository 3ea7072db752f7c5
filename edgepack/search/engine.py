"""Hardware-in-the-loop recipe search with successive halving.

1. The profile's own recipe chain is exported exactly as ``edgepack export`` would (the *default*) and
   measured at full fidelity: every search result is compared with it in the same run.
2. Candidates from :func:`edgepack.search.space.search_space` are taken in :func:`~edgepack.search.space.ordered`
   order (deterministic for a seed); identical recipes (same content digest) are measured once.
3. Rung 0 (cheap): export, accuracy on an eval subset, a short latency run. Candidates that clearly break a
   constraint are dropped; the best ``1/eta`` by Pareto rank then latency are promoted.
4. Rung 1 (full): accuracy on the whole eval set and the full latency run, on the rung-0 artifact.
5. The Pareto front over rung-1 trials, and the fastest trial within the constraints.

Every measurement goes to the journal first (``OUT/journal.jsonl``), so a re-run with the same ``--out``
continues where the last one stopped; the trials are then stored in the results database, and the journal
notes which ones were stored, so a crashed run's measurements are stored by the run that completes it.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.compress.gate import Gate
from edgepack.compress.quantize import QuantizationPlan
from edgepack.compress.recipe import Recipe, RecipeBook
from edgepack.data.dataset import Dataset
from edgepack.device_bench.config import BenchConfig, BenchResult
from edgepack.device_bench.runners.base import Runner
from edgepack.errors import EdgepackError, InputError
from edgepack.exporters.base import Exporter
from edgepack.models.source import ModelSource
from edgepack.search.journal import Journal
from edgepack.search.pareto import Constraints, choose, pareto_front, pareto_ranks
from edgepack.search.recipe_file import write_recipe
from edgepack.search.space import BASE_RECIPES, Candidate, recipe_digest
from edgepack.search.trial import Scorer, Trial, measure_latency
from edgepack.targets.registry import Registry
from edgepack.targets.schema import TargetProfile

DEFAULT_KEY = "default"
"""Key prefix of the default trial; the max drop follows, since the chain's outcome depends on it."""
EXPORT_SLOWDOWN = 0.05
"""The latency tolerance of the default trial's export (``edgepack export``'s default)."""
BENCH_ROUNDS = 3
"""The full latency run is split into this many rounds, interleaved across the finalists."""


@dataclass
class SearchProgress:
    """What a progress display shows after each step."""

    done: int
    total: int
    stage: str
    best: Trial | None


ProgressFn = Callable[[SearchProgress], None]


@dataclass(frozen=True)
class SearchSettings:
    """How hard to search: trials, seed, halving rate, fidelities, and the timing tie tolerance."""

    trials: int = 8
    seed: int = 0
    eta: int = 2
    """Rung 0 keeps ``ceil(trials / eta)`` candidates for the full evaluation."""
    subset: int | None = None
    """Eval samples of rung 0 (default: a quarter of the eval set, at least 64)."""
    quick_bench: BenchConfig = field(default_factory=lambda: BenchConfig(min_iters=20, min_seconds=0.2))
    bench: BenchConfig = field(default_factory=lambda: BenchConfig(min_iters=100, min_seconds=2.0))
    tie_tolerance: float = 0.05
    """Latencies within this fraction of the fastest count as equally fast when choosing."""

    def __post_init__(self) -> None:
        if self.trials < 0:
            raise InputError(f"--trials {self.trials}: must be >= 0")
        if self.eta < 1:
            raise InputError(f"eta {self.eta}: must be >= 1")
        if self.subset is not None and self.subset < 1:
            raise InputError(f"subset {self.subset}: must be >= 1")
        if not 0 <= self.tie_tolerance < 1:
            raise InputError(f"tie tolerance {self.tie_tolerance}: must be in [0, 1)")


@dataclass
class SearchResult:
    """Every trial, the Pareto front of the full-fidelity ones, the default, and the choice."""

    out: Path
    target: str
    constraints: Constraints
    trials: list[Trial]
    front: list[Trial]
    default: Trial
    chosen: Trial | None
    chosen_recipe: Path | None
    """``OUT/chosen-recipe.toml`` (for ``edgepack export --recipe``), when a trial satisfies the constraints."""
    reason: str | None = None
    """Why nothing was chosen."""
    store_run: int | None = None
    outputs: dict[str, Path] = field(default_factory=dict)

    @property
    def final(self) -> list[Trial]:
        return [t for t in self.trials if t.rung == 1]

    def to_dict(self) -> dict[str, Any]:
        front = {t.key for t in self.front}
        return {
            "out": str(self.out),
            "target": self.target,
            "constraints": vars(self.constraints),
            "default": self.default.summary(),
            "chosen": self.chosen.summary() if self.chosen else None,
            "chosen_recipe": str(self.chosen_recipe) if self.chosen_recipe else None,
            "reason": self.reason,
            "front": [t.key for t in self.front],
            "trials": [{**t.summary(), "on_front": t.rung == 1 and t.key in front} for t in self.trials],
            "store_run": self.store_run,
            "outputs": {k: str(v) for k, v in self.outputs.items()},
        }


def _subset_indices(length: int, size: int) -> np.ndarray:
    """``size`` indices spread evenly over the eval set (eval files are often sorted by class)."""
    return np.unique(np.linspace(0, length - 1, num=min(size, length)).round().astype(int))


@dataclass
class _Context:
    """Everything the steps of one search share."""

    model: ModelSource
    profile: TargetProfile
    exporter: Exporter
    book: RecipeBook
    registry: Registry
    runner: Runner
    journal: Journal
    out: Path
    constraints: Constraints
    settings: SearchSettings
    quick_source: ModelSource
    full_source: ModelSource
    scorer: Scorer
    cache: bool
    progress: ProgressFn
    done: int = 0
    total: int = 0
    best: Trial | None = None
    ranking: list[str] | None = None

    def tick(self, stage: str, trial: Trial | None = None) -> None:
        if trial is not None:
            self.done += 1
            if trial.measured and not self.constraints.violations(*trial.objectives()):
                if self.best is None or trial.latency_ms < self.best.latency_ms:  # type: ignore[operator]
                    self.best = trial
        self.progress(SearchProgress(self.done, self.total, stage, self.best))

    # ---- exports -------------------------------------------------------------------------------

    def export(self, source: ModelSource, name: str, chain: Sequence[str | Path], max_drop: float,
               max_slowdown: float) -> tuple[Path, dict[str, Any]]:
        from edgepack.api import export

        result = export(source, [self.profile.id], out=self.out / "trials", name=name, recipe_chain=chain,
                        max_drop=max_drop, max_slowdown=max_slowdown, registry=self.registry, recipes=self.book,
                        cache=self.cache)
        return result.bundle, result.manifest["targets"][self.profile.id]

    def recipe_file(self, recipe: Recipe) -> Path:
        path = self.out / "recipes" / f"{recipe.name}.toml"
        if not path.exists():
            write_recipe(recipe, path, header="written by edgepack search; use with: edgepack export --recipe FILE")
        return path

    def ranking_layers(self) -> list[str]:
        """The int8 sensitivity ranking (layers whose lone quantization costs accuracy), computed once."""
        if self.ranking is not None:
            return self.ranking
        record = self.journal.find("sensitivity")
        if record is None:
            self.tick("ranking layer sensitivity")
            base = self.book.get("int8")
            probe = base.model_copy(update={
                "name": "search-sensitivity", "precision": "mixed",
                "mixed": base.mixed.model_copy(update={"max_float_layers": 1,
                                                        "sensitivity_samples": len(self.quick_source.extra["eval"])}),
            })
            try:
                _, entry = self.export(self.quick_source, "sensitivity", [self.recipe_file(probe)], 1.0, 1.0)
                ranking = entry.get("sensitivity") or []
                error = None if ranking else (entry.get("error") or "no sensitivity ranking")
            except EdgepackError as exc:
                ranking, error = [], str(exc)
            record = {"kind": "sensitivity", "ranking": ranking, "error": error}
            self.journal.append(record)
        self.ranking = [r["layer"] for r in record["ranking"] if r["drop"] > 0]
        return self.ranking

    # ---- trials --------------------------------------------------------------------------------

    def replay(self, key: str, rung: int) -> Trial | None:
        record = self.journal.find("trial", key=key, rung=rung)
        return Trial.from_dict(record) if record else None

    def record(self, trial: Trial) -> Trial:
        self.journal.append({"kind": "trial", **trial.to_dict()})
        return trial

    def default_trial(self) -> Trial:
        """Rung 0 of the profile's recipe chain, exported exactly as ``edgepack export`` would (whole eval set,
        the user's max drop): the reference every search result is compared with, always promoted."""
        key = f"{DEFAULT_KEY}@max_drop={self.constraints.max_drop:g}"
        trial = self.replay(key, 0)
        if trial is not None:
            return trial
        started = time.perf_counter()
        trial = Trial(key, "default", f"default chain {'>'.join(self.profile.recipes)}", 0)
        try:
            bundle, entry = self.export(self.full_source, "default", (), self.constraints.max_drop, EXPORT_SLOWDOWN)
            if entry["status"] != "ok":
                trial.error = entry.get("error") or entry["status"]
            else:
                recipe = _winning_recipe(entry, self.book)
                trial.name, trial.label = f"default:{entry['recipe']}", f"default ({entry['recipe']})"
                path = self.recipe_file(recipe.model_copy(update={"name": f"default-{_safe(entry['recipe'])}"}))
                trial.recipe_file = str(path.relative_to(self.out))
                self.measure_quick(trial, bundle, entry)
        except EdgepackError as exc:
            trial.error = str(exc)
        trial.seconds = time.perf_counter() - started
        return self.record(trial)

    def measure_quick(self, trial: Trial, bundle: Path, entry: dict[str, Any]) -> None:
        """Rung-0 numbers of an exported bundle: the export's own gate, and a short latency run."""
        artifact = entry.get("artifact") or {}
        if entry["status"] != "ok" or not artifact:
            trial.error = entry.get("error") or entry["status"]
            return
        if not entry.get("gate"):
            trial.error = f"not measurable here: {entry.get('runnable_here')}"
            return
        trial.bundle = str(bundle.relative_to(self.out))
        trial.precision, trial.size_bytes = artifact.get("precision"), artifact.get("bytes")
        gate = entry["gate"]
        trial.metric = f"{gate['kind']}:{gate['metric']}"
        trial.baseline, trial.value, trial.drop, trial.samples = gate["baseline"], gate["value"], gate["drop"], gate["samples"]
        trial.set_bench(measure_latency(bundle, self.profile.id, self.runner, self.settings.quick_bench))
        trial.status = "ok"

    def quick(self, candidate: Candidate, recipe: Recipe, digest: str) -> Trial:
        """Rung 0: export with the eval subset as the gate's data, and a short latency run."""
        trial = self.replay(digest, 0)
        if trial is not None:
            return trial
        started = time.perf_counter()
        trial = Trial(digest, recipe.name, candidate.label, 0)
        try:
            path = self.recipe_file(recipe)
            trial.recipe_file = str(path.relative_to(self.out))
            bundle, entry = self.export(self.quick_source, recipe.name, [path], 1.0, 1.0)
            self.measure_quick(trial, bundle, entry)
        except EdgepackError as exc:
            trial.error = str(exc)
        trial.seconds = time.perf_counter() - started
        return self.record(trial)

    def finals(self, finalists: list[Trial]) -> list[Trial]:
        """Rung 1 of the finalists on their rung-0 artifacts: accuracy on the whole eval set, then the full latency
        run split into :data:`BENCH_ROUNDS` rounds interleaved across finalists (machine drift hits all alike)."""
        done: dict[str, Trial] = {}
        for quick in finalists:
            replayed = self.replay(quick.key, 1)
            if replayed is not None:
                done[quick.key] = replayed
        pending: list[tuple[Trial, Trial, Path]] = []
        for quick in finalists:
            if quick.key in done:
                continue
            trial = Trial(quick.key, quick.name, quick.label, 1, recipe_file=quick.recipe_file, precision=quick.precision,
                          size_bytes=quick.size_bytes, bundle=quick.bundle)
            self.tick(f"rung 1: accuracy of {quick.label}")
            bundle = self.out / str(quick.bundle)
            started = time.perf_counter()
            try:
                gate = self.scorer.score(self.exporter, bundle, self.profile.id)
                if isinstance(gate, str):
                    trial.error = gate
                else:
                    trial.set_gate(gate)
                    pending.append((trial, quick, bundle))
            except EdgepackError as exc:
                trial.error = str(exc)
            trial.seconds = time.perf_counter() - started
            if trial.error:
                done[quick.key] = self.record(trial)
                self.tick(f"rung 1: {quick.label}", trial)
        rounds: dict[str, list[BenchResult]] = {trial.key: [] for trial, _, _ in pending}
        config = self.settings.bench
        per_round = replace(config, min_iters=max(1, math.ceil(config.min_iters / BENCH_ROUNDS)),
                            min_seconds=config.min_seconds / BENCH_ROUNDS)
        failed: dict[str, str] = {}
        for index in range(BENCH_ROUNDS):
            for trial, quick, bundle in pending:
                if trial.key in failed:
                    continue
                self.tick(f"rung 1: latency round {index + 1}/{BENCH_ROUNDS} of {quick.label}")
                started = time.perf_counter()
                try:
                    rounds[trial.key].append(measure_latency(bundle, self.profile.id, self.runner, per_round))
                except EdgepackError as exc:
                    failed[trial.key] = str(exc)
                trial.seconds += time.perf_counter() - started
        for trial, quick, _ in pending:
            if trial.key in failed:
                trial.error = failed[trial.key]
            else:
                results = sorted(rounds[trial.key], key=lambda r: r.p50)
                trial.set_bench(results[len(results) // 2])  # the round with the median p50: a real measurement
                trial.status = "ok"
            done[quick.key] = self.record(trial)
            self.tick(f"rung 1: {quick.label}", trial)
        return [done[t.key] for t in finalists]

    def survivors(self, quick: list[Trial]) -> list[Trial]:
        """Rung-0 trials worth a full evaluation: not clearly infeasible, best Pareto rank, then fastest."""
        keep = math.ceil(len(quick) / self.settings.eta) if quick else 0
        margin = 1.0 / math.sqrt(max(1, len(self.quick_source.extra["eval"])))  # subset sampling error, generous
        loose = Constraints(
            self.constraints.max_drop + margin,
            None if self.constraints.latency_budget_ms is None else self.constraints.latency_budget_ms * 1.5,
            self.constraints.size_budget_mb,  # size is exact at every rung
        )
        viable = [t for t in quick if t.measured and not loose.violations(*t.objectives())]
        ranks = pareto_ranks(viable, Trial.objectives)
        order = sorted(range(len(viable)), key=lambda i: (ranks[i], viable[i].latency_ms, viable[i].key))
        return [viable[i] for i in order[:keep]]


def _winning_recipe(entry: dict[str, Any], book: RecipeBook) -> Recipe:
    """The recipe ``edgepack export`` shipped for a target (mixed precision resolved to its float layers)."""
    label = str(entry["recipe"])
    base = book.get(label.split("[", 1)[0])
    winner = next(a for a in reversed(entry["attempts"]) if a["status"] == "passed")
    if base.precision == "mixed":
        return base.model_copy(update={"precision": "int8", "exclude": list(winner.get("excluded_layers") or [])})
    return base


def _file_digest(out: Path, trial: Trial) -> str | None:
    """Content digest of a trial's recipe file (``None`` when it has none)."""
    from edgepack.compress.recipe import load_recipe_file

    return recipe_digest(load_recipe_file(out / trial.recipe_file)) if trial.recipe_file else None


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-")


def search(
    source: str | ModelSource,
    target: str,
    *,
    runner: str = "host",
    calib: str | Path | None = None,
    eval_data: str | Path | None = None,
    max_drop: float = 0.01,
    latency_budget_ms: float | None = None,
    size_budget_mb: float | None = None,
    out: str | Path = "search",
    settings: SearchSettings | None = None,
    db: str | None = None,
    record: bool = True,
    registry: Registry | None = None,
    recipes: RecipeBook | None = None,
    cache: bool = True,
    progress: ProgressFn = lambda p: None,
) -> SearchResult:
    """Search ``target``'s recipe space for ``source`` with measured accuracy, latency (on ``runner``) and size.

    Writes ``OUT/front.json``, ``OUT/front.png``, ``OUT/chosen-recipe.toml`` (when a trial meets the
    constraints) and the journal; with ``record`` every trial measured in this invocation is stored in the
    results database ``db`` (default: ``$EDGEPACK_DB`` or the user data dir). Re-running with the same ``OUT``
    resumes. Raises :class:`~edgepack.errors.EdgepackError` for bad input before measuring anything.
    """
    from edgepack.device_bench.runners.base import runner_for_uri
    from edgepack.exporters.registry import get_exporter
    from edgepack.compress.recipe import load_recipes
    from edgepack.models.loaders import load_source
    from edgepack.models.reference import reference_predictor
    from edgepack.search.space import search_space
    from edgepack.targets.registry import load_registry

    settings = settings or SearchSettings()
    if not 0 <= max_drop <= 1:
        raise InputError(f"--max-drop {max_drop}: must be between 0 and 1 (absolute, 0.01 = 1 point)")
    for flag, value in (("--latency-budget-ms", latency_budget_ms), ("--size-budget-mb", size_budget_mb)):
        if value is not None and not value > 0:
            raise InputError(f"{flag} {value}: must be positive")
    constraints = Constraints(max_drop, latency_budget_ms, size_budget_mb)
    registry = registry or load_registry()
    book = recipes or load_recipes()
    profile = registry.get(target)
    exporter = get_exporter(profile.runtime)
    missing = exporter.toolchain().missing
    if missing:
        raise InputError(f"toolchain for '{profile.runtime}' is missing: {'; '.join(missing.values())}")
    bench_runner = runner_for_uri(runner, registry=registry)
    model = source if isinstance(source, ModelSource) else load_source(source)
    calib_set, eval_set = _datasets(model, calib, eval_data)
    quick_eval = eval_set.take(_subset_indices(len(eval_set), settings.subset or max(64, len(eval_set) // 4)))
    extra = {k: v for k, v in model.extra.items() if k != "_onnx_cache"}
    out = Path(out)
    used_recipes = ({*profile.recipes, *BASE_RECIPES.values()} | {"int8"}) & set(book.recipes)  # what trials derive from
    identity = {
        "source": model.uri, "source_sha256": model.sha256, "target": profile.id, "runner": bench_runner.uri,
        "calib_sha256": calib_set.sha256() if calib_set is not None else None, "eval_sha256": eval_set.sha256(),
        "subset": len(quick_eval), "bench": settings.bench.to_dict(), "quick_bench": settings.quick_bench.to_dict(),
        "recipes_sha256": {name: recipe_digest(book.get(name)) for name in sorted(used_recipes)},
    }
    context = _Context(
        model, profile, exporter, book, registry, bench_runner, Journal.open(out, identity), out, constraints, settings,
        quick_source=replace(model, extra={**extra, "calib": calib_set, "eval": quick_eval}),
        full_source=replace(model, extra={**extra, "calib": calib_set, "eval": eval_set}),
        scorer=Scorer(model, Gate(eval_set, model.outputs[0].name, max_drop), reference_predictor(model)),
        cache=cache, progress=progress,
    )
    space = search_space(profile, exporter, book, torch_source=model.torch_module is not None,
                         sensitivity="int8" in book and calib_set is not None)
    result = _run(context, space, has_calib=calib_set is not None)
    if record:
        from edgepack.search.record import record_trials

        stored = {(r["key"], r["rung"]) for rec in context.journal.records if rec.get("kind") == "stored"
                  for r in rec["trials"]}
        pending = [t for t in result.trials if (t.key, t.rung) not in stored]
        result.store_run = record_trials(db, result, pending, model, bench_runner.uri, identity)
        if result.store_run is not None:
            context.journal.append({"kind": "stored", "run": result.store_run, "db": _safe_url(db),
                                    "trials": [{"key": t.key, "rung": t.rung} for t in pending]})
    return result


def _run(context: _Context, space: Sequence[Candidate], *, has_calib: bool) -> SearchResult:
    """Default, rung 0 over the ordered space, rung 1 over the survivors, then front, choice and outputs."""
    from edgepack.search.report import write_outputs
    from edgepack.search.space import ordered

    settings, book = context.settings, context.book
    context.total = 2 + settings.trials + math.ceil(settings.trials / settings.eta)
    context.tick("default recipe chain")
    default_quick = context.default_trial()
    context.tick("default recipe chain", default_quick)
    seen = {_file_digest(context.out, default_quick)} - {None}
    quick: list[Trial] = []
    for candidate in ordered(space, settings.seed):
        if len(quick) >= settings.trials:
            break
        recipe = candidate.recipe(book, context.ranking_layers() if candidate.exclude_top else ())
        if not has_calib and QuantizationPlan(recipe, None).needs_calibration:
            continue  # static int8 / AWQ without calibration data (none given, none made): export would skip it
        digest = recipe_digest(recipe)
        if digest in seen:
            continue  # identical to a candidate already measured (e.g. fewer sensitive layers than asked)
        seen.add(digest)
        context.tick(f"rung 0: {candidate.label}")
        trial = context.quick(candidate, recipe, digest)
        quick.append(trial)
        context.tick(f"rung 0: {candidate.label}", trial)
    finalists = [default_quick, *context.survivors(quick)] if default_quick.measured else context.survivors(quick)
    context.total = context.done + len(finalists)
    final = context.finals(finalists)
    default = next((t for t in final if t.key == default_quick.key), default_quick)

    measured = [t for t in final if t.measured]
    front = pareto_front(measured, Trial.objectives)
    chosen = choose(measured, Trial.objectives, lambda t: t.key, context.constraints, settings.tie_tolerance)
    result = SearchResult(context.out, context.profile.id, context.constraints, [default_quick, *quick, *final], front,
                          default, chosen, None)
    if chosen is None:
        result.reason = "no measured candidate satisfies the constraints" if measured else "no candidate could be measured"
    write_outputs(result, book)
    return result


def _safe_url(db: str | None) -> str:
    """The database URL without its password (for the journal)."""
    from edgepack.farm.store import default_db_url, normalize_url
    from sqlalchemy.engine import make_url

    return make_url(normalize_url(db or default_db_url())).render_as_string(hide_password=True)


def _datasets(model: ModelSource, calib: str | Path | None, eval_data: str | Path | None) -> tuple[Dataset | None, Dataset]:
    from edgepack.data.dataset import load_dataset

    from edgepack.models.synthetic import synthetic_calibration

    calib_set = load_dataset(calib, model.inputs) if calib is not None else model.extra.get("calib")
    if calib_set is None:  # as export does: static int8 calibrates on domain-shaped data edgepack makes
        calib_set = synthetic_calibration(model.inputs)
    eval_set = load_dataset(eval_data, model.inputs, require_labels=True) if eval_data is not None else model.extra.get("eval")
    if eval_set is None:
        raise InputError("search needs evaluation data: pass --eval DATA (.npz with 'labels')")
    if len(eval_set) == 0:
        raise InputError(f"{eval_set.origin}: evaluation data is empty")
    return calib_set, eval_set
