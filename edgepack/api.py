"""The public Python API: :func:`export`, :func:`check`, :func:`search` and :func:`verify`.

Everything is validated before anything is written; per-target failures are recorded in the bundle
and do not stop the other targets.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from dataclasses import dataclass, field
from pathlib import Path

from edgepack._faults import fault_point
from edgepack._fs import make_temp_dir, sweep_stale
from edgepack.bundle.hashing import canonical_json
from edgepack.bundle.lock import BundleLock
from edgepack.bundle.manifest import artifact_dir, build_manifest, target_entry
from edgepack.bundle.signing import load_signer
from edgepack.bundle.verify import VerifyResult, verify_bundle
from edgepack.bundle.writer import BundleWriter, is_edgepack_bundle, prepare_destination, read_manifest
from edgepack.compress.gate import DETECTION_METRIC, Gate, parse_metric
from edgepack.compress.passes import PassContext, TrainStep
from edgepack.compress.recipe import RecipeBook, load_recipe_file, load_recipes
from edgepack.data.dataset import Dataset, load_dataset
from edgepack.data.image_folder import load_image_folder
from edgepack.data.metric_function import MetricFunction, is_metric_function, load_metric_function
from edgepack.exporters.onnx.hub import export_onnx
from edgepack.errors import DataError, EdgepackError, InputError, OutputError, environment_failure
from edgepack.export_cache import ExportCache, default_cache_dir, target_key
from edgepack.models.in_memory import is_torch_module, source_from_module
from edgepack.models.input_spec import parse_input_spec
from edgepack.models.labels import read_labels, with_labels
from edgepack.models.loaders import load_source
from edgepack.models.reference import reference_predictor
from edgepack.models.synthetic import domain_dataset_arrays
from edgepack.models.synthetic import synthetic_calibration
from edgepack.models.source import ModelSource, TensorSpec
from edgepack.postprocess import POSTPROCESS_KEY, apply_postprocess, parse_postprocess
from edgepack.pipeline import Evaluation, ProgressFn, TargetResult, run_target
from edgepack.session import ExportSession
from edgepack.signals import raise_if_interrupted
from edgepack.targets.placement import PlacementReport
from edgepack.targets.registry import Registry, load_registry
from edgepack.targets.schema import TargetProfile

PARITY_SAMPLES = 32
SYNTHETIC_SAMPLES = 8
SYNTHETIC_ORIGIN = "synthetic, domain-shaped"
"""How inputs edgepack made are labelled in the manifest (:mod:`edgepack.models.synthetic`)."""
FIDELITY_SEED = 1
"""Seed of the synthetic fidelity inputs (the first :data:`SYNTHETIC_SAMPLES` are the synthetic parity inputs)."""
SCRATCH_PREFIX = "edgepack-"
"""Per-export scratch directories in the system temp dir (``edgepack-<pid>.<random>``)."""
log = logging.getLogger("edgepack")


@dataclass
class ExportResult:
    """Where the bundle went and what happened per target."""

    bundle: Path
    manifest: dict
    results: list[TargetResult]
    """Targets exported in this run (cache hits are in ``cached`` and only in the manifest)."""
    cached: list[str] = field(default_factory=list)
    """Target ids replayed from the export cache."""
    published: bool = True
    """False when every target failed and the previous, complete bundle at ``bundle`` was kept instead."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds of the whole export: ``load`` (source, data, evaluation sets) and ``total`` (each target's
    stages are in its manifest entry)."""

    @property
    def ok(self) -> bool:
        return self.published and self.manifest["status"] == "ok"


def _bundle_name(source: ModelSource, name: str | None) -> str:
    raw = name or source.name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip(".-")
    if not cleaned:
        raise InputError(f"bundle name '{raw}' has no usable characters")
    return cleaned


def _resolve_targets(registry: Registry, targets: Sequence[str]) -> list[TargetProfile]:
    if not targets:
        raise InputError("no --target given", hint="run 'edgepack targets list'")
    profiles: list[TargetProfile] = []
    for target in targets:
        profile = registry.get(target)
        if profile not in profiles:
            profiles.append(profile)
    return profiles


def _with_recipe_files(book: RecipeBook, chain: Sequence[str | Path]) -> tuple[RecipeBook, list[str]]:
    """Resolve ``--recipe`` values (names or ``.toml`` files) into a recipe book and a chain of names."""
    recipes = dict(book.recipes)
    names: list[str] = []
    for item in chain:
        text = str(item)
        if text.endswith(".toml"):
            if not Path(text).is_file():
                raise InputError(f"--recipe {text}: recipe file not found")
            recipe = load_recipe_file(Path(text))
            recipes[recipe.name] = recipe
            names.append(recipe.name)
        else:
            book.get(text)  # raises naming the known recipes
            names.append(text)
    return RecipeBook(recipes), names


def _evaluation(
    source: ModelSource, calib: Dataset | None, eval_data: Dataset | None, max_drop: float, max_slowdown: float,
    metric: str = "auto", scorer: tuple[str, MetricFunction] | None = None,
) -> Evaluation:
    """Held-out parity inputs: eval data, else the tail of calib data, else synthetic inputs.

    The gate reads the labelled eval data when there is some; otherwise it is a fidelity gate on its own,
    larger set of :func:`~edgepack.compress.gate.fidelity_samples` samples (see :func:`_fidelity_set`), so
    that one changed prediction is at most half of ``max_drop``. Parity keeps its small set.
    """
    from edgepack.compress.gate import fidelity_samples

    if eval_data is not None:
        parity = eval_data.take(slice(0, PARITY_SAMPLES))
    elif calib is not None and len(calib) >= 8:
        parity = calib.take(slice(len(calib) - min(PARITY_SAMPLES, len(calib) // 4), None))
    else:
        parity = Dataset(domain_dataset_arrays(source.inputs, SYNTHETIC_SAMPLES, seed=1), None, SYNTHETIC_ORIGIN)
    gate_data = eval_data if eval_data is not None else _fidelity_set(source, calib, fidelity_samples(max_drop))
    name, function = scorer if scorer is not None else ("", None)
    gate = Gate(gate_data, source.outputs[0].name, max_drop, latency_tolerance=max_slowdown, metric=metric,
                scorer=function, scorer_name=name)
    return Evaluation(reference_predictor(source), parity, gate)


def _fidelity_set(source: ModelSource, calib: Dataset | None, count: int) -> Dataset:
    """``count`` unlabelled inputs for the fidelity gate: the last ``count`` calibration samples (real inputs;
    the quantizers calibrate on the first ones), topped up with synthetic inputs when there are fewer."""
    if calib is None or len(calib) == 0:
        return Dataset(domain_dataset_arrays(source.inputs, count, seed=FIDELITY_SEED), None, SYNTHETIC_ORIGIN)
    real = calib.take(slice(max(0, len(calib) - count), None))
    missing = count - len(real)
    if missing <= 0:
        return Dataset(real.inputs, None, calib.origin)
    extra = domain_dataset_arrays(source.inputs, missing, seed=FIDELITY_SEED)
    if any(extra[k].shape[1:] != v.shape[1:] for k, v in real.inputs.items() if k in extra) or set(extra) != set(real.inputs):
        return Dataset(real.inputs, None, calib.origin)  # symbolic dims: synthetic samples would not stack
    # samples stay on axis 0 in a Dataset whatever each input's own batch axis (concatenate keeps the axes)
    return real.concatenate(Dataset(extra, None, SYNTHETIC_ORIGIN), f"{calib.origin} ({len(real)}) + {SYNTHETIC_ORIGIN} ({missing})")


def _load_data(path: str | Path | None, source: ModelSource, builtin: str, *, labels: bool) -> Dataset | None:
    """``.npz``/``.npy`` arrays or an ImageFolder-style directory; the source's built-in data when ``None``."""
    if path is None:
        return source.extra.get(builtin)
    if Path(path).is_dir():
        return load_image_folder(Path(path), source.inputs, source.labels)
    if "unbaked_inputs" in source.extra:  # --bake-preprocess: float-layout files are converted to raw pixels
        from edgepack.models.bake import load_baked_dataset

        return load_baked_dataset(path, source, require_labels=labels)
    return load_dataset(path, source.inputs, require_labels=labels)


def _as_source(source: Any, weights: str | Path | None, specs: list[TensorSpec], random_weights: bool) -> ModelSource:
    """A loaded source: as given, built around an in-memory ``torch.nn.Module``, or loaded from its string."""
    if isinstance(source, ModelSource):
        return source
    if is_torch_module(source):
        if weights is not None or random_weights:
            raise InputError("weights/random_weights apply to named sources; load weights into the module first")
        return source_from_module(source, specs)
    if not isinstance(source, (str, Path)):
        raise InputError(f"cannot export a {type(source).__name__}: give a source string, a ModelSource or a "
                         "torch.nn.Module")
    return load_source(str(source), weights=weights, inputs=specs, random_weights=random_weights)


def export(
    source: str | ModelSource | Any,
    targets: Sequence[str],
    *,
    calib: str | Path | None = None,
    eval_data: str | Path | None = None,
    max_drop: float = 0.01,
    max_slowdown: float = 0.05,
    out: str | Path = "dist",
    name: str | None = None,
    weights: str | Path | None = None,
    random_weights: bool = False,
    inputs: Sequence[str | TensorSpec] = (),
    recipe_chain: Sequence[str | Path] = (),
    bake_preprocess: bool = False,
    labels: str | Path | None = None,
    postprocess: str | None = None,
    iou: float | None = None,
    conf: float | None = None,
    max_det: int | None = None,
    sign_key: str | Path | None = None,
    train_data: Iterable[Any] | None = None,
    train_step: TrainStep | None = None,
    pass_options: dict[str, Any] | None = None,
    registry: Registry | None = None,
    recipes: RecipeBook | None = None,
    metric: str = "auto",
    cache: bool = True,
    archive: bool = False,
    fail_on_fallback: float | None = None,
    bench: str | None = None,
    bench_config: Any = None,
    progress: ProgressFn = lambda target, stage: None,
) -> ExportResult:
    """Export ``source`` to every target and write one bundle ``OUT/NAME.edgepack`` atomically.

    ``eval_data`` is labelled ``.npz`` data, an ImageFolder-style directory, or ``FILE.py:function`` /
    ``package.module:function`` scoring a predictor (:mod:`edgepack.data.metric_function`); ``metric`` picks
    the built-in metric (``auto``, ``top1``, ``top5``..., ``cosine``).
    ``source`` is a source string (``torchvision:NAME``, ``file.py:factory``, ``model.onnx``...), a loaded
    :class:`ModelSource`, or an in-memory ``torch.nn.Module`` (then ``inputs`` must name its inputs).
    ``torchvision:``/``timm:`` sources load their pretrained weights (``EDGEPACK_OFFLINE=1``: from the local
    cache only) unless ``weights`` names a file or ``random_weights`` exports the untrained architecture.
    ``train_data`` / ``train_step`` feed passes that train (QAT, distillation, pruning fine-tune);
    ``pass_options`` is handed to passes as ``PassContext.extra`` (e.g. ``{"student": module}`` for distill).
    Targets whose inputs are unchanged since an earlier export are replayed from the export cache
    (:mod:`edgepack.export_cache`; ``cache=False`` or runs with training callables always export).
    ``labels`` is a file of class names (one per line, or JSON) written into every artifact's contract in
    place of the source's own (:mod:`edgepack.models.labels`; the count must match an output's classes).
    ``bake_preprocess`` makes each image input ``uint8`` NHWC with the cast, scale, mean/std and layout in the
    graph (:mod:`edgepack.models.bake`); data in the float layout is converted to raw pixels for it.
    ``postprocess="nms"`` appends the runtime's own NMS to a YOLO-style head (``[1, 4+C, N]`` or ``[1, N, 4+C]``)
    with ``iou`` / ``conf`` / ``max_det`` (defaults 0.45 / 0.25 / 100): fixed-size outputs ``boxes``, ``scores``,
    ``classes``, ``count`` (:mod:`edgepack.postprocess`), gated on mAP@0.5 against the fp32 model's boxes.
    ``archive`` writes ``OUT/NAME.edgepack.zip`` instead of the directory. ``fail_on_fallback`` (percent)
    fails a target whose placement report leaves more than that share of ops to the CPU (for CI).
    ``bench`` (a runner URI, e.g. ``"host"``) measures every shipped artifact that runner can run, from the
    staged bundle, with ``bench_config`` (a :class:`~edgepack.device_bench.config.BenchConfig`; default 50
    iterations / 1 s) and records the summary as the target's ``bench`` entry in the manifest.
    Raises :class:`edgepack.errors.EdgepackError` for bad input before anything is written, and
    :class:`edgepack.errors.OutputError` when another export holds ``OUT/NAME.edgepack`` or the disk is full.
    """
    if not 0 <= max_drop <= 1:
        raise InputError(f"--max-drop {max_drop}: must be between 0 and 1 (absolute, 0.01 = 1 point)")
    if not 0 <= max_slowdown <= 1:
        raise InputError(f"--max-slowdown {max_slowdown}: must be between 0 and 1 (0.05 = 5 % slower than fp32)")
    if fail_on_fallback is not None and not 0 <= fail_on_fallback <= 100:
        raise InputError(f"--fail-on-fallback {fail_on_fallback}: must be a percentage between 0 and 100")
    metric = parse_metric(metric)
    nms = parse_postprocess(postprocess, iou=iou, conf=conf, max_det=max_det)
    if metric == DETECTION_METRIC and nms is None:
        raise InputError(f"--metric {DETECTION_METRIC} scores NMS detections", hint="add --postprocess nms")
    if nms is not None and metric not in ("auto", DETECTION_METRIC):
        raise InputError(f"--metric {metric}: --postprocess nms artifacts are gated on {DETECTION_METRIC} (boxes "
                         "against the fp32 model's)", hint=f"leave --metric out or use {DETECTION_METRIC}")
    signer = load_signer(Path(sign_key)) if sign_key is not None else None
    registry = registry or load_registry()
    bench_runner = _bench_runner(bench, registry) if bench is not None else None  # a bad runner URI fails before any work
    recipes = recipes or load_recipes()
    profiles = _resolve_targets(registry, targets)
    if recipe_chain:
        recipes, names = _with_recipe_files(recipes, recipe_chain)
        profiles = [p.model_copy(update={"recipes": names}) for p in profiles]
        _check_recipes_apply(profiles, recipes, names)
    specs = [parse_input_spec(s) if isinstance(s, str) else s for s in inputs]
    baked_dir: Path | None = None
    started = time.perf_counter()
    progress("source", "loading")
    label_names = read_labels(labels) if labels is not None else None  # a bad file is refused before loading
    model = _as_source(source, weights, specs, random_weights)
    if label_names is not None:  # class names for the contract, replacing the source's own
        model = with_labels(model, label_names, str(labels))
    if bake_preprocess:  # uint8 NHWC in, preprocessing in the graph, for every target (edgepack.models.bake)
        from edgepack.models.bake import bake_preprocess as bake

        baked_dir = make_temp_dir(SCRATCH_PREFIX)  # the baked ONNX graph of an .onnx source; removed at the end
        model = bake(model, baked_dir)
    if nms is not None:  # detections out: the runtime's own NMS after the head (edgepack.postprocess)
        baked_dir = baked_dir or make_temp_dir(SCRATCH_PREFIX)
        model = apply_postprocess(model, nms, baked_dir)
        metric = DETECTION_METRIC
    calib_data = _load_data(calib, model, "calib", labels=False)
    scorer = load_metric_function(str(eval_data)) if eval_data is not None and is_metric_function(str(eval_data)) else None
    eval_set = _load_data(eval_data if scorer is None else None, model, "eval", labels=True)
    if eval_set is not None and nms is not None and eval_set.labels is not None:
        raise DataError(f"--postprocess nms: {eval_set.origin} has class labels; the detection gate scores boxes "
                        "against the fp32 model's (mAP@0.5)", hint="pass unlabelled inputs, or --eval FILE.py:function")
    if eval_set is not None:
        _check_eval_set(eval_set, model)
    bundle_name = _bundle_name(model, name)
    evaluation = _evaluation(model, calib_data, eval_set if scorer is None else None, max_drop, max_slowdown, metric, scorer)
    if calib_data is None:  # static int8 calibrates on domain-shaped data edgepack makes (after the gate's own set)
        calib_data = synthetic_calibration(model.inputs)
    destination = Path(out) / f"{bundle_name}.edgepack"
    training = PassContext(calib=calib_data, train_data=train_data, train_step=train_step,
                           input_names=tuple(s.name for s in model.inputs), extra=dict(pass_options or {}))
    trains = train_data is not None or train_step is not None or bool(pass_options)
    # Training callables and a user metric are code: their results cannot be keyed, so they always export.
    cache_dir = default_cache_dir() if cache and not trains and scorer is None else None
    keyer = _TargetKeyer(model, recipes, {"calib": calib_data, "eval": eval_set, "parity": evaluation.parity_inputs,
                                          "gate": evaluation.gate.data},
                         {"max_drop": max_drop, "max_slowdown": max_slowdown, "metric": metric}) if cache_dir else None
    export_cache = ExportCache(cache_dir) if cache_dir else None

    with _writable_output(destination), BundleLock(destination):
        prepare_destination(destination)  # a stranded old bundle back, a user's folder refused, stale staging gone
        sweep_stale(Path(tempfile.gettempdir()), SCRATCH_PREFIX)
        if export_cache:
            export_cache.sweep()
        timings = {"load": round(time.perf_counter() - started, 3)}  # the source, the data, the evaluation sets
        session = ExportSession()  # fp32 baselines, sensitivity rankings, reference outputs shared by the targets
        scratch = make_temp_dir(SCRATCH_PREFIX)
        try:
            entries: dict[str, dict[str, Any]] = {}
            files: dict[str, Path] = {}
            results: list[TargetResult] = []
            cached: list[str] = []
            for profile in profiles:
                raise_if_interrupted()
                key = keyer.key(profile) if keyer else None
                hit = export_cache.get(key) if export_cache and key else None
                if hit is not None:
                    progress(profile.id, "cached")
                    entries[profile.id] = hit.entry
                    cached.append(profile.id)
                    files.update(hit.files)
                    continue
                result = run_target(model, profile, recipes, calib_data, evaluation, scratch / profile.id, progress, training,
                                    session=session)
                results.append(result)
                entry, target_files = _target_payload(result, scratch / "_reports", scratch / profile.id)
                if nms is not None:
                    entry["postprocess"] = model.extra[POSTPROCESS_KEY]
                entries[profile.id] = entry
                files.update(target_files)
                if export_cache and key and result.status == "ok":
                    export_cache.put(key, entry, target_files)
                fault_point("export.target-done")
            if fail_on_fallback is not None:
                entries = {target: _limit_cpu_fallback(entry, fail_on_fallback) for target, entry in entries.items()}
            manifest = build_manifest(
                bundle_name,
                model,
                entries,
                calibration=calib_data.origin if calib_data is not None else None,
                evaluation=_evaluation_label(scorer, eval_set, evaluation, metric),
                max_drop=max_drop,
                max_slowdown=max_slowdown,
            )
            if _would_lose_a_bundle(manifest, destination, archive):
                raise_if_interrupted()
                log.warning("every target failed; kept the previous bundle at %s", destination)
                timings["total"] = round(time.perf_counter() - started, 3)
                return ExportResult(destination, manifest, results, cached, published=False, timings=timings)
            dropped = _dropped_targets(manifest, destination, archive)
            if dropped:
                log.warning("%s: replacing the previous bundle drops target(s) %s (not in this export; "
                            "export them again with the others to keep them)", destination, ", ".join(dropped))
            progress("bundle", "writing")
            with BundleWriter(destination) as writer:
                for relative, path in sorted(files.items()):
                    writer.add_file(path, relative)
                if bench_runner is not None:
                    progress("bundle", f"benchmarking on {bench}")
                    _bench_staged(bench_runner, writer.staging, manifest, bench_config)
                _add_documents(writer, manifest)
                raise_if_interrupted()  # never publish a bundle after SIGINT/SIGTERM, even one a toolchain swallowed
                bundle = writer.commit(manifest, signer, archive=archive)
            timings["total"] = round(time.perf_counter() - started, 3)
        finally:
            session.close()
            shutil.rmtree(scratch, ignore_errors=True)
            if baked_dir is not None:
                shutil.rmtree(baked_dir, ignore_errors=True)
    return ExportResult(bundle, manifest, results, cached, timings=timings)


def _check_recipes_apply(profiles: Sequence[TargetProfile], recipes: RecipeBook, names: Sequence[str]) -> None:
    """``--recipe`` given explicitly and no requested target's runtime can apply any of it (the exporter's own
    answer, e.g. fp32 on the Edge TPU): refuse before any work. Where some targets can, the others are
    recorded as failed without exporting (the pipeline skips recipes an exporter refuses)."""
    from edgepack.exporters.registry import get_exporter

    refusals: list[tuple[str, str]] = []
    for profile in profiles:
        try:
            exporter = get_exporter(profile.runtime)
        except EdgepackError:
            return  # an unsupported runtime is reported per target
        reasons = [exporter.refusal(_probe_recipe(recipes.get(name))) for name in names]
        if any(reason is None for reason in reasons):
            return
        refusals.append((profile.id, str(reasons[0])))
    if refusals:
        target, reason = refusals[0]
        raise InputError(f"--recipe {', '.join(names)} cannot run on {target}: {reason}",
                         hint=f"'edgepack targets show {target}' lists the recipes it runs")


def _probe_recipe(recipe: Any) -> Any:
    """Mixed precision is asked of an exporter as the int8 recipe it is built on (as the pipeline does)."""
    return recipe.model_copy(update={"precision": "int8"}) if recipe.precision == "mixed" else recipe


def _dropped_targets(manifest: dict[str, Any], destination: Path, archive: bool) -> list[str]:
    """Targets of the bundle at ``destination`` that the new one will not have."""
    if archive or not is_edgepack_bundle(destination):
        return []
    try:
        previous = read_manifest(destination).get("targets") or {}
    except EdgepackError:
        return []
    return sorted(set(previous) - set(manifest["targets"]))


def _would_lose_a_bundle(manifest: dict[str, Any], destination: Path, archive: bool) -> bool:
    """True when the new bundle has no artifact at all while the one it would replace has some: a run where
    everything failed never replaces a working bundle."""
    if archive or any(entry.get("artifact") for entry in manifest["targets"].values()):
        return False
    if not is_edgepack_bundle(destination):
        return False
    try:
        previous = read_manifest(destination)
    except EdgepackError:
        return False
    return any(isinstance(entry, dict) and entry.get("artifact") for entry in (previous.get("targets") or {}).values())


def _evaluation_label(scorer: tuple[str, Any] | None, eval_set: Dataset | None, evaluation: Evaluation, metric: str) -> str:
    if scorer is not None:
        return f"user metric {scorer[0]}"
    if eval_set is not None:
        return eval_set.origin + ("" if metric == "auto" else f" ({metric})")
    return f"fidelity on {evaluation.gate.data.origin} inputs"


class _TargetKeyer:
    """Cache keys of one export's targets (the source and data are hashed once)."""

    def __init__(self, source: ModelSource, recipes: RecipeBook, data: dict[str, Dataset | None], settings: dict[str, Any]) -> None:
        self.source, self.recipes, self.settings = source, recipes, {**settings, "parity_samples": PARITY_SAMPLES}
        self.data = {role: (ds.sha256() if ds is not None else None) for role, ds in data.items()}

    def key(self, profile: TargetProfile) -> str | None:
        from edgepack.exporters.registry import get_exporter

        try:
            distributions = get_exporter(profile.runtime).distributions
        except EdgepackError:
            return None  # unsupported runtimes are cheap to report again
        return target_key(self.source, profile, self.recipes, distributions, self.data, self.settings)


def _check_eval_set(eval_set: Dataset, source: ModelSource) -> None:
    """Empty eval data and labels the model cannot produce are input errors, found before any export."""
    if len(eval_set) == 0:
        raise DataError(f"{eval_set.origin}: evaluation data is empty")
    if eval_set.labels is None:
        return
    classes = source.outputs[0].shape[-1] if source.outputs and source.outputs[0].shape else None
    low, high = int(eval_set.labels.min()), int(eval_set.labels.max())
    if low < 0 or (isinstance(classes, int) and high >= classes):
        bound = f"0..{classes - 1}" if isinstance(classes, int) else "non-negative"
        raise DataError(
            f"{eval_set.origin}: labels range {low}..{high} but the model's output '{source.outputs[0].name}' has classes {bound}"
        )


@contextmanager
def _writable_output(destination: Path) -> Iterator[None]:
    """Create ``OUT`` if needed (removed again if the export leaves nothing there); an ``OUT`` that is a file
    is an :class:`OutputError`, and a full disk, an I/O error or a forbidden location anywhere in the export
    (``--out``, ``TMPDIR``, the cache) one :class:`~edgepack.errors.EnvironmentFailure`."""
    parent = destination.parent
    created = False
    for folder in (parent, *parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise OutputError(f"--out {parent}: {folder} is a file, not a directory",
                                  hint="choose a directory for --out")
            break
    try:
        if not parent.exists():
            parent.mkdir(parents=True)
            created = True
        yield
    except OSError as exc:
        failure = environment_failure(exc, f"writing {destination}")
        if failure is exc:
            raise
        raise failure from None
    finally:
        if created:
            try:
                parent.rmdir()  # only succeeds when the export left nothing behind
            except OSError:
                pass


def _bench_runner(uri: str, registry: Registry) -> Any:
    from edgepack.device_bench.runners import runner_for_uri

    return runner_for_uri(uri, registry=registry)


def _bench_staged(runner: Any, staging: Path | None, manifest: dict[str, Any], config: Any) -> None:
    """Measure each shipped, host-runnable artifact of the staged bundle; record the summary (no raw samples)
    as ``manifest["targets"][id]["bench"]``, or why it was not measured."""
    from edgepack.device_bench.bench import bench_inputs
    from edgepack.device_bench.config import BenchConfig
    from edgepack.device_bench.runners.base import artifact_from_entry

    assert staging is not None
    config = config or BenchConfig(min_iters=50, min_seconds=1.0)
    for target, entry in manifest["targets"].items():
        if entry["status"] != "ok" or entry["artifact"] is None:
            continue
        if entry["runnable_here"] != "yes" and runner.scheme == "host":
            entry["bench"] = {"runner": "host", "measured": False, "reason": f"not runnable here: {entry['runnable_here']}"}
            continue
        artifact = artifact_from_entry(staging, target, entry["profile"]["runtime"], entry["artifact"],
                                       recipe=str(entry.get("recipe") or ""), toolchain=entry.get("toolchain") or {})
        try:
            result = runner.run(artifact, config, inputs=bench_inputs(manifest, artifact))
        except EdgepackError as exc:
            entry["bench"] = {"runner": runner.scheme, "measured": False, "reason": str(exc)}
            continue
        summary = result.to_dict()
        summary["iterations"] = len(summary.pop("latencies_ms", ()))
        entry["bench"] = {"measured": True, **summary}


def _limit_cpu_fallback(entry: dict[str, Any], limit_pct: float) -> dict[str, Any]:
    """Fail an exported target whose placement leaves more than ``limit_pct`` % of its ops to the CPU.
    The artifact stays in the bundle for inspection; the target's status and the exit code say it failed."""
    fraction = (entry.get("placement") or {}).get("cpu_fallback_fraction")
    if entry["status"] != "ok" or fraction is None or fraction * 100 <= limit_pct:
        return entry
    placement = entry["placement"]
    cpu_ops = round(fraction * placement["total_ops"])
    return {**entry, "status": "failed", "error": (
        f"{fraction:.1%} of ops ({cpu_ops}/{placement['total_ops']}) fall back to the CPU, "
        f"over --fail-on-fallback {limit_pct:g} %; see reports/{entry['profile']['id']}/placement.json")}


def _add_documents(writer: BundleWriter, manifest: dict[str, Any]) -> None:
    """What app teams read first: MODEL_CARD.md and load-and-run snippets, generated from the manifest."""
    from edgepack.bundle.model_card import render_model_card
    from edgepack.package.render import render_snippets

    for relative, text in sorted(render_snippets(manifest).items()):
        writer.path(f"snippets/{relative}").write_text(text, encoding="utf-8", newline="\n")
    writer.path("MODEL_CARD.md").write_text(render_model_card(manifest), encoding="utf-8", newline="\n")


TOOLCHAIN_LOG_LIMIT = 1 << 20
"""Bytes of one toolchain log kept in the bundle (the end of a longer one, where converters say what failed)."""


def _toolchain_logs(result: TargetResult, workdir: Path, reports_root: Path) -> dict[str, Path]:
    """The converters' logs of this target's attempts (e.g. each onnx2tf worker run) as
    ``reports/<target>/logs/<attempt dir>/<file>.log``; failure reasons that name a log in the (temporary)
    work dir are rewritten to name its copy in the bundle."""
    target = result.profile.id
    files: dict[str, Path] = {}
    if not workdir.is_dir():
        return files
    for log in sorted(workdir.rglob("*.log")):
        relative = f"reports/{target}/logs/{log.relative_to(workdir).as_posix()}"
        copy = reports_root / relative
        copy.parent.mkdir(parents=True, exist_ok=True)
        data = log.read_bytes()
        if len(data) > TOOLCHAIN_LOG_LIMIT:
            data = (f"[edgepack: the first {len(data) - TOOLCHAIN_LOG_LIMIT} bytes of this log are left out]\n".encode()
                    + data[-TOOLCHAIN_LOG_LIMIT:])
        copy.write_bytes(data)
        files[relative] = copy
    if files:
        here, there = str(workdir), f"reports/{target}/logs"
        for attempt in result.attempts:
            attempt.reason = attempt.reason.replace(here, there)
        if result.error:
            result.error = result.error.replace(here, there)
    return files


def _target_payload(result: TargetResult, reports_root: Path, workdir: Path | None = None
                    ) -> tuple[dict[str, Any], dict[str, Path]]:
    """The manifest entry of a freshly exported target and its files (bundle-relative path -> file), its
    converters' logs from ``workdir`` included."""
    target = result.profile.id
    files: dict[str, Path] = _toolchain_logs(result, workdir, reports_root) if workdir is not None else {}
    reports: dict[str, Any] = {f"reports/{target}/attempts.json": [a.to_dict() for a in result.attempts]}
    if result.placement:
        reports[f"reports/{target}/placement.json"] = result.placement
    if result.divergence:
        reports[f"reports/{target}/divergence.json"] = result.divergence
    for relative, data in reports.items():
        path = reports_root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(canonical_json(data))
        files[relative] = path
    if result.artifact is not None:
        root = result.artifact.path.parent
        for file in result.artifact.files:
            files[f"{artifact_dir(target)}/{file.relative_to(root).as_posix()}"] = file
    entry = target_entry(result)
    entry["reports"] = entry["reports"] + sorted(f for f in files if f.startswith(f"reports/{target}/logs/"))
    return entry, files


def check(
    source: str | ModelSource | Any,
    target: str,
    *,
    weights: str | Path | None = None,
    random_weights: bool = False,
    inputs: Sequence[str | TensorSpec] = (),
    registry: Registry | None = None,
) -> PlacementReport | None:
    """Placement precheck of ``source`` on ``target`` without the recipe chain, parity or a bundle.

    ONNX-vocabulary profiles are checked on the ONNX hub graph, TFLite-vocabulary ones (Edge TPU included) on an
    fp32 TFLite conversion; each accelerator in its own preferred precision. ``None`` when the profile has no
    accelerator with an op table (everything runs on its CPU).
    """
    from edgepack.exporters.registry import check_exporter
    from edgepack.targets.placement import placement_for

    profile = (registry or load_registry()).get(target)
    specs = [parse_input_spec(s) if isinstance(s, str) else s for s in inputs]
    model = _as_source(source, weights, specs, random_weights)
    scratch = Path(tempfile.mkdtemp(prefix="edgepack-check-"))
    try:
        hub = export_onnx(model, scratch / "_onnx", dynamic=profile.dynamic_shapes)
        vocabularies = {acc.op_vocabulary for acc in profile.accelerators.values() if not acc.all_ops}
        # Op support only: each accelerator is judged in its own preferred precision (quantization keeps the
        # op set); the export's placement report judges the precision actually shipped.
        if vocabularies <= {"onnx"}:
            return placement_for(profile, None, hub, "onnx", hub)
        fp32 = load_recipes().get("fp32")
        converter = check_exporter(next(iter(vocabularies)), profile.runtime, fp32)
        artifact = converter.export(model, profile, fp32, None, scratch / "fp32")
        return placement_for(profile, None, artifact.path, artifact.format, hub)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def verify(bundle: str | Path, *, public_key: str | Path | None = None) -> VerifyResult:
    """Re-hash every file of ``bundle`` (and check its signature with ``public_key``); raise
    :class:`edgepack.errors.BundleError` on the first mismatch."""
    return verify_bundle(Path(bundle), Path(public_key) if public_key is not None else None)
