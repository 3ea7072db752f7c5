"""TFLite / LiteRT exporter: ONNX hub -> onnx2tf -> ``.tflite``; alternate path litert-torch.

Flow of :meth:`TfliteExporter.export`:

1. a static-shape (batch 1) ONNX file from the hub (:func:`edgepack.exporters.onnx.export_onnx`);
2. onnx2tf in a subprocess (:mod:`edgepack.exporters._tflite_worker`): onnxslim with fixed input shapes,
   node names sanitised for TensorFlow, ``output_signaturedefs=True``, no network (its sample-image
   download is replaced and every non-loopback connection raises), calibration arrays only from
   ``calib``; the ``_float32`` or ``_float16`` file is picked by the recipe precision;
3. if that fails and the source has a torch module: litert-torch in a subprocess (fp32 only — it has no
   public float16 option);
4. the chosen file is copied to ``workdir/model.tflite``, loaded with the LiteRT interpreter, and its
   own I/O (names, shapes, dtypes, layout) is recorded together with how each source tensor maps onto
   it (``settings["input_map"]`` / ``settings["output_map"]``: artifact tensor name and the permutation
   with ``artifact = source.transpose(perm)``).

TensorFlow and onnx2tf are never imported in this process; ``ai_edge_litert`` is (it does not import
TensorFlow).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.compress.recipe import Recipe
from edgepack.data.dataset import Dataset
from edgepack.errors import ExportError, UnsupportedError
from edgepack.exporters.base import Arrays, Artifact, Exporter, NotRunnable, Predictor, Toolchain
from edgepack.exporters.onnx import export_onnx
from edgepack.models.source import ModelSource, QuantParams, TensorSpec
from edgepack.targets.schema import TargetProfile

WORKER_MODULE = "edgepack.exporters._tflite_worker"
SUPPORTED_PRECISIONS = ("fp32", "fp16")
LITERT_TORCH_PRECISIONS = ("fp32",)
LITERT_TORCH_MISSING = "litert-torch not installed: pip install 'edgepack[litert-torch]'"
CALIB_SAMPLES = 20
"""onnx2tf only feeds the first batch of the calibration arrays to its checks; 20 is its own sample count."""
DEFAULT_TIMEOUT_S = 900.0
DEFAULT_THREADS = 2
_EXIT_MISSING = 3

CHANNEL_LAST = {3: (0, 2, 1), 4: (0, 2, 3, 1), 5: (0, 2, 3, 4, 1)}
"""Permutation onnx2tf applies to channel-first inputs of each rank (``artifact = source.transpose(p)``)."""
CHANNEL_LAST_LAYOUT = {3: "NWC", 4: "NHWC", 5: "NDHWC"}
PSEUDO_OPS_FOR_FLEX = {
    "FlexErf": "erf",
    "FlexAsin": "asin",
    "FlexAcos": "acos",
    "FlexAtan": "atan",
    "FlexGatherNd": "gathernd",
    "FlexPow": "power",
}
"""TF Select ops onnx2tf can avoid with ``replace_to_pseudo_operators`` (its op keys are lower-case)."""
TRANSPOSED_INPUT_RANKS = (4, 5)
"""Input ranks onnx2tf may move to channel-last; 3-D inputs (usually sequences) keep their layout."""


# --------------------------------------------------------------------------------------------------
# Worker subprocess
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerOutcome:
    """What one worker run produced."""

    ok: bool
    files: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    reason: str = ""
    missing: bool = False
    log: Path | None = None


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Failure))(?::\s*(.*))?$")
_NOISE = (
    "cudart_stub",
    "absl::InitializeLog",
    "Could not find cuda",
    "oneDNN custom operations",
    "This TensorFlow binary is optimized",
    "To enable the following instructions",
    "rebuild TensorFlow with the appropriate compiler flags",
)
_GENERIC_ONNX2TF = (
    "The trace log is below",
    "Read this and deal with it",
    "input_onnx_file_path:",
    "onnx_op_name:",
    "onnx_op_type:",
    "Alternatively, if the input OP has a dynamic dimension",
    "Also, for models that include NonMaxSuppression",
    "https://github.com/PINTO0309",
    "Traceback (most recent call last)",
    "converter exited with status",
)


def _clean_lines(text: str) -> list[str]:
    lines = (_ANSI.sub("", line).strip() for line in text.splitlines())
    return [line for line in lines if line and not any(noise in line for noise in _NOISE)]


def summarize_failure(output: str, fallback: str = "") -> str:
    """The most informative single line of a failed conversion's output.

    Combines the last specific onnx2tf ``ERROR:`` line and the last Python exception line
    (``SomeError: message``), adds the ONNX node onnx2tf names as failing, and falls back to
    ``fallback``, then to the last non-noise line.
    """
    lines = _clean_lines(output)
    exception = next((line for line in reversed(lines) if _is_exception_line(line)), "")
    specific, node = "", ""
    for line in reversed(lines):
        if not line.startswith("ERROR:"):
            continue
        message = line[len("ERROR:") :].strip()
        if not node and message.startswith("onnx_op_name:"):
            node = message[len("onnx_op_name:") :].strip()
        elif not specific and message and not any(generic in message for generic in _GENERIC_ONNX2TF):
            specific = message
    parts = [p for p in (specific, exception) if p]
    summary = f"{parts[0]} ({parts[1]})" if len(parts) == 2 else (parts[0] if parts else fallback)
    if not summary:
        summary = lines[-1] if lines else "no output"
    if node:
        summary = f"{summary} [ONNX node {node}]"
    return summary[:400]


def _is_exception_line(line: str) -> bool:
    match = _EXCEPTION_LINE.match(line)
    return bool(match) and match.group(1) != "SystemExit" and bool((match.group(2) or "").strip())


def _worker_env() -> dict[str, str]:
    """Environment of a worker: edgepack importable, quiet TensorFlow, no GPU, offline hubs."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(proxy, None)
    return env


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill the worker and anything it started (it runs in its own session, so its group id is its pid)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    process.wait()


def run_worker(mode: str, request: dict[str, Any], rundir: Path, timeout_s: float) -> WorkerOutcome:
    """Run ``python -m edgepack.exporters._tflite_worker MODE request.json`` in ``rundir``.

    stdout and stderr go to ``rundir/worker.log``; the outcome's ``reason`` is one line.
    """
    rundir.mkdir(parents=True, exist_ok=True)
    request_path, result_path, log_path = rundir / "request.json", rundir / "result.json", rundir / "worker.log"
    result_path.unlink(missing_ok=True)
    request_path.write_text(json.dumps({**request, "result": str(result_path)}, indent=1), encoding="utf-8")
    command = [sys.executable, "-m", WORKER_MODULE, mode, str(request_path)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=rundir, env=_worker_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            returncode = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            return WorkerOutcome(False, reason=f"timed out after {timeout_s:g} s", log=log_path)
    output = log_path.read_text(encoding="utf-8", errors="replace")
    result = _read_result(result_path)
    if result.get("ok") and returncode == 0:
        return WorkerOutcome(True, result.get("files", {}), tuple(result.get("notes", ())), log=log_path)
    if result.get("missing") or returncode == _EXIT_MISSING:
        reason = str(result.get("error", "converter not installed"))
        return WorkerOutcome(False, reason=reason, missing=True, log=log_path)
    fallback = str(result.get("error") or _describe_returncode(returncode))
    return WorkerOutcome(False, reason=summarize_failure(output, fallback), log=log_path)


def _read_result(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _describe_returncode(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"worker killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"worker killed by signal {-returncode}"
    return f"worker exited with status {returncode}"


# --------------------------------------------------------------------------------------------------
# I/O mapping between the source and the .tflite model
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TfliteTensor:
    """One input or output of a .tflite model as the LiteRT interpreter reports it."""

    name: str
    """Signature key when the model has a signature, else the tensor name."""
    position: int
    shape: tuple[int, ...]
    dtype: str
    quant: QuantParams | None = None


@dataclass(frozen=True)
class TfliteIO:
    """Inputs and outputs of a .tflite model, and the signature they were read from (if any)."""

    signature: str | None
    inputs: tuple[TfliteTensor, ...]
    outputs: tuple[TfliteTensor, ...]


def _tensor(name: str, position: int, details: dict[str, Any]) -> TfliteTensor:
    scale, zero_point = details.get("quantization", (0.0, 0))
    quant = QuantParams(float(scale), int(zero_point)) if scale else None
    shape = tuple(int(d) for d in details["shape"])
    return TfliteTensor(name, position, shape, np.dtype(details["dtype"]).name, quant)


def _pick_signature(signatures: dict[str, Any]) -> str | None:
    if not signatures:
        return None
    return "serving_default" if "serving_default" in signatures else sorted(signatures)[0]


def read_tflite_io(path: Path) -> TfliteIO:
    """Load ``path`` with the LiteRT interpreter and read its I/O (signature runner when present)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    signature = _pick_signature(interpreter.get_signature_list())
    if signature is not None:
        runner = interpreter.get_signature_runner(signature)
        inputs = [_tensor(n, i, d) for i, (n, d) in enumerate(runner.get_input_details().items())]
        outputs = [_tensor(n, i, d) for i, (n, d) in enumerate(runner.get_output_details().items())]
    else:
        interpreter.allocate_tensors()
        inputs = [_tensor(d["name"], i, d) for i, d in enumerate(interpreter.get_input_details())]
        outputs = [_tensor(d["name"], i, d) for i, d in enumerate(interpreter.get_output_details())]
    return TfliteIO(signature, tuple(inputs), tuple(outputs))


def _identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


def _candidate_perms(rank: int, converter: str) -> list[tuple[int, ...]]:
    """Permutations an output of ``rank`` may have undergone (onnx2tf may leave 3-5-D outputs channel-last)."""
    if converter == "onnx2tf" and rank in CHANNEL_LAST:
        return [CHANNEL_LAST[rank], _identity(rank)]
    return [_identity(rank)]


def _input_perms(spec: TensorSpec, converter: str) -> list[tuple[int, ...]]:
    """The permutation the converter was asked to apply to this input first, then identity."""
    rank = len(spec.shape)
    if converter == "onnx2tf" and rank in TRANSPOSED_INPUT_RANKS:
        return [CHANNEL_LAST[rank], _identity(rank)]
    return [_identity(rank)]


def _transposed_shape(shape: Sequence[int], perm: Sequence[int]) -> tuple[int, ...]:
    return tuple(shape[p] for p in perm)


def _match_inputs(specs: Sequence[TensorSpec], tensors: Sequence[TfliteTensor], converter: str) -> dict[str, Any]:
    """source input name -> {"name", "position", "perm"}.

    onnx2tf keeps the ONNX input names, so inputs are matched by name (position as a fallback);
    litert-torch names them ``args_N`` in the source's order, so they are matched by position.
    """
    lookup = {t.name: t for t in tensors} if converter == "onnx2tf" else {}
    mapping: dict[str, Any] = {}
    for index, spec in enumerate(specs):
        tensor = lookup.get(spec.name)
        if tensor is None:
            if index >= len(tensors):
                raise ExportError(f"the .tflite model has {len(tensors)} input(s), the source {len(specs)}")
            tensor = tensors[index]
        shape = spec.concrete_shape(1)
        perm = next((p for p in _input_perms(spec, converter) if _transposed_shape(shape, p) == tensor.shape), None)
        if perm is None:
            raise ExportError(
                f"input '{spec.name}' {list(shape)} does not fit .tflite input '{tensor.name}' {list(tensor.shape)}"
            )
        mapping[spec.name] = {"name": tensor.name, "position": tensor.position, "perm": list(perm)}
    return mapping


def _output_candidates(
    spec: TensorSpec, tensors: Sequence[TfliteTensor], converter: str
) -> list[tuple[TfliteTensor, tuple[int, ...]]]:
    shape = spec.concrete_shape(1)
    return [
        (tensor, perm)
        for tensor in tensors
        for perm in _candidate_perms(len(shape), converter)
        if len(tensor.shape) == len(shape) and _transposed_shape(shape, perm) == tensor.shape
    ]


def _relative_error(reference: np.ndarray, actual: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    actual = actual.astype(np.float64)
    scale = max(float(np.max(np.abs(reference))) if reference.size else 0.0, 1e-12)
    return float(np.max(np.abs(reference - actual))) / scale if reference.size else 0.0


def _match_outputs(
    specs: Sequence[TensorSpec],
    tensors: Sequence[TfliteTensor],
    converter: str,
    probe: tuple[Arrays, Arrays] | None,
) -> dict[str, Any]:
    """source output name -> {"name", "position", "perm"}.

    Candidates must fit the shape (as is, or channel-last for 3-5-D); among several, the one whose
    values are closest to the source's on a probe input wins (``probe`` = (source outputs, tflite
    outputs keyed by tflite name)), else the first in the model's output order.
    """
    used: set[str] = set()
    mapping: dict[str, Any] = {}
    for spec in specs:
        candidates = [(t, p) for t, p in _output_candidates(spec, tensors, converter) if t.name not in used]
        if not candidates:
            shapes = ", ".join(f"{t.name} {list(t.shape)}" for t in tensors)
            raise ExportError(
                f"source output '{spec.name}' {spec.shape_str()} has no matching .tflite output ({shapes})"
            )
        if probe is not None and len(candidates) > 1:
            reference, actual = probe
            candidates.sort(
                key=lambda c: _relative_error(np.transpose(reference[spec.name], c[1]), actual[c[0].name])
            )
        tensor, perm = candidates[0]
        used.add(tensor.name)
        mapping[spec.name] = {"name": tensor.name, "position": tensor.position, "perm": list(perm)}
    return mapping


def _inverse(perm: Sequence[int]) -> list[int]:
    return [int(i) for i in np.argsort(perm)]


# --------------------------------------------------------------------------------------------------
# Predictor
# --------------------------------------------------------------------------------------------------


class TflitePredictor(Predictor):
    """Runs a .tflite artifact with the LiteRT interpreter, in the source's names and layout.

    Inputs are transposed per ``settings["input_map"]``; outputs are transposed back per
    ``settings["output_map"]``. A batch larger than the artifact's static batch is run one slice at a
    time and concatenated.
    """

    def __init__(self, path: Path, settings: dict[str, Any], threads: int = DEFAULT_THREADS) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self._input_map: dict[str, Any] = settings["input_map"]
        self._output_map: dict[str, Any] = settings["output_map"]
        signature = settings.get("signature")
        self._runner = self._interpreter.get_signature_runner(signature) if signature else None
        if self._runner is not None:
            details = self._runner.get_input_details()
            self._input_details = {m["name"]: details[m["name"]] for m in self._input_map.values()}
        else:
            self._interpreter.allocate_tensors()
            inputs = self._interpreter.get_input_details()
            self._input_details = {m["name"]: inputs[m["position"]] for m in self._input_map.values()}

    def _static_batch(self) -> int | None:
        """The artifact's fixed batch size (leading dim of its first input), if it has one."""
        for details in self._input_details.values():
            shape = tuple(int(d) for d in details["shape"])
            return shape[0] if shape and shape[0] > 0 else None
        return None

    def __call__(self, inputs: Arrays) -> Arrays:
        missing = [name for name in self._input_map if name not in inputs]
        if missing:
            raise KeyError(f"missing input(s) {missing}; expected {sorted(self._input_map)}")
        arrays = {name: np.asarray(inputs[name]) for name in self._input_map}
        step = self._static_batch()
        first = next(iter(arrays.values()), None)
        total = first.shape[0] if first is not None and first.ndim else None
        if step is None or total is None or total == step or total % step:
            return self._run_once(arrays)
        parts = [self._run_once({k: v[i : i + step] for k, v in arrays.items()}) for i in range(0, total, step)]
        return {name: np.concatenate([part[name] for part in parts], axis=0) for name in self._output_map}

    def _feeds(self, arrays: Arrays) -> dict[str, np.ndarray]:
        feeds: dict[str, np.ndarray] = {}
        for source_name, entry in self._input_map.items():
            dtype = self._input_details[entry["name"]]["dtype"]
            feeds[entry["name"]] = np.ascontiguousarray(np.transpose(arrays[source_name], entry["perm"]), dtype=dtype)
        return feeds

    def run_raw(self, arrays: Arrays) -> Arrays:
        """One static batch: source-keyed inputs in, the artifact's own outputs (names, layout) out."""
        feeds = self._feeds(arrays)
        if self._runner is not None:
            return {name: np.asarray(value) for name, value in self._runner(**feeds).items()}
        for name, value in feeds.items():
            self._interpreter.set_tensor(self._input_details[name]["index"], value)
        self._interpreter.invoke()
        return {d["name"]: self._interpreter.get_tensor(d["index"]) for d in self._interpreter.get_output_details()}

    def _run_once(self, arrays: Arrays) -> Arrays:
        raw = self.run_raw(arrays)
        return {
            source_name: np.transpose(np.asarray(raw[entry["name"]]), _inverse(entry["perm"]))
            for source_name, entry in self._output_map.items()
        }

    def close(self) -> None:
        self._runner = None
        self._interpreter = None  # type: ignore[assignment]


# --------------------------------------------------------------------------------------------------
# Exporter
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Converted:
    """A converted .tflite file and how it was made."""

    path: Path
    converter: str
    notes: tuple[str, ...]


class TfliteExporter(Exporter):
    """TFLite (LiteRT) artifacts through onnx2tf, with litert-torch as the alternate path."""

    runtime = "tflite"
    distributions = ("onnx2tf", "tensorflow-cpu", "ai-edge-litert", "onnx", "onnxslim", "torch")

    def __init__(self, *, timeout_s: float = DEFAULT_TIMEOUT_S, threads: int = DEFAULT_THREADS) -> None:
        self.timeout_s = timeout_s
        self.threads = threads

    def supports(self, recipe: Recipe) -> str | None:
        if recipe.precision in SUPPORTED_PRECISIONS:
            return None
        return (
            f"tflite exporter: precision '{recipe.precision}' (recipe '{recipe.name}') is not supported yet; "
            f"supported: {', '.join(SUPPORTED_PRECISIONS)}"
        )

    def export(
        self,
        source: ModelSource,
        profile: TargetProfile,
        recipe: Recipe,
        calib: Dataset | None,
        workdir: Path,
    ) -> Artifact:
        reason = self.supports(recipe)
        if reason is not None:
            raise UnsupportedError(reason)
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        converted = self._convert(source, recipe, calib, workdir)
        target = workdir / "model.tflite"
        shutil.copyfile(converted.path, target)
        io, input_map, output_map = self._map_io(source, target, converted.converter, calib, workdir)
        toolchain = dict(self.toolchain().versions)
        if converted.converter == "litert-torch":
            toolchain.update(Toolchain.of("litert-torch").versions)
        return Artifact(
            target_id=profile.id,
            runtime=self.runtime,
            path=target,
            files=(target,),
            format="tflite",
            precision=recipe.precision,
            recipe=recipe.name,
            inputs=tuple(_artifact_specs(source.inputs, io.inputs, input_map, keep_preprocess=True)),
            outputs=tuple(_artifact_specs(source.outputs, io.outputs, output_map, keep_preprocess=False)),
            toolchain=toolchain,
            converter=converted.converter,
            notes=converted.notes,
            settings={"signature": io.signature, "input_map": input_map, "output_map": output_map},
        )

    def predictor(self, artifact: Artifact, source: ModelSource) -> Predictor | NotRunnable:
        if importlib.util.find_spec("ai_edge_litert") is None:
            return NotRunnable("ai-edge-litert is not installed: pip install ai-edge-litert")
        return TflitePredictor(artifact.path, artifact.settings, threads=self.threads)

    # -- conversion paths ----------------------------------------------------------------------

    def _convert(self, source: ModelSource, recipe: Recipe, calib: Dataset | None, workdir: Path) -> _Converted:
        """onnx2tf first; litert-torch when that fails and the source is a torch module."""
        try:
            return self._via_onnx2tf(source, recipe, calib, workdir)
        except ExportError as first:
            primary = f"onnx2tf: {first.message}"
        alternate = self._litert_unavailable(source, recipe)
        if alternate is None:
            try:
                converted = self._via_litert_torch(source, recipe, workdir)
            except ExportError as second:
                alternate = f"litert-torch: {second.message}"
            else:
                note = f"converted with litert-torch because {primary}"
                return _Converted(converted.path, converted.converter, (note, *converted.notes))
        raise ExportError(f"TFLite conversion of {source.uri} failed on every path: {primary} | {alternate}")

    def _via_onnx2tf(self, source: ModelSource, recipe: Recipe, calib: Dataset | None, workdir: Path) -> _Converted:
        """Convert with onnx2tf; if the result needs TF Select (Flex) ops that onnx2tf can replace with
        its pseudo-ops (approximations built from builtin ops), convert once more with them."""
        onnx_path = export_onnx(source, workdir / "onnx", dynamic=False)
        request = _onnx2tf_request(source, onnx_path, calib, workdir / "onnx2tf")
        outcome = self._onnx2tf_cached(source, request, workdir / "onnx2tf")
        chosen = _chosen_file(outcome, recipe)
        notes = list(outcome.notes)
        flex = flex_ops(chosen)
        pseudo = sorted({PSEUDO_OPS_FOR_FLEX[op] for op in flex if op in PSEUDO_OPS_FOR_FLEX})
        if pseudo:
            rundir = workdir / "onnx2tf_pseudo"
            request = {**request, "pseudo_ops": pseudo, "output_dir": str(rundir / "out")}
            outcome = self._onnx2tf_cached(source, request, rundir)
            chosen = _chosen_file(outcome, recipe)
            flex = flex_ops(chosen)
            notes.append(
                f"onnx2tf pseudo-ops used for {', '.join(pseudo)} (builtin-op approximations instead of TF Select ops)"
            )
        if flex:
            raise ExportError(f"the .tflite needs TF Select (Flex) ops that LiteRT builtins lack: {', '.join(flex)}")
        _check_loadable(chosen)
        return _Converted(chosen, "onnx2tf", tuple(notes))

    def _onnx2tf_cached(self, source: ModelSource, request: dict[str, Any], rundir: Path) -> WorkerOutcome:
        """Run the onnx2tf worker unless this run already converted identical bytes with identical options
        (a recipe chain asks for fp16 and fp32 of the same ONNX file; onnx2tf writes both at once)."""
        key = _cache_key(request)
        cache: dict[str, WorkerOutcome] = source.extra.setdefault("_tflite_onnx2tf_cache", {})
        outcome = cache.get(key)
        if outcome is None or not all(Path(p).exists() for p in outcome.files.values()):
            outcome = run_worker("onnx2tf", request, rundir, self.timeout_s)
            if outcome.ok:
                cache[key] = outcome
        if not outcome.ok:
            raise ExportError(f"{outcome.reason} (log: {outcome.log})")
        return outcome

    @staticmethod
    def _litert_unavailable(source: ModelSource, recipe: Recipe) -> str | None:
        """Why the litert-torch path cannot be tried, or ``None`` when it can."""
        if source.torch_module is None and source.exported_program is None:
            return "litert-torch: not applicable (the source has no torch module)"
        if recipe.precision not in LITERT_TORCH_PRECISIONS:
            return (
                f"litert-torch: precision '{recipe.precision}' is not supported on this path "
                "(litert_torch.convert has no float16 option)"
            )
        if importlib.util.find_spec("litert_torch") is None:
            return LITERT_TORCH_MISSING
        return None

    def _via_litert_torch(self, source: ModelSource, recipe: Recipe, workdir: Path) -> _Converted:
        rundir = workdir / "litert_torch"
        rundir.mkdir(parents=True, exist_ok=True)
        request = _litert_request(source, recipe, rundir)
        outcome = run_worker("litert-torch", request, rundir, self.timeout_s)
        if outcome.missing:
            raise ExportError(f"{LITERT_TORCH_MISSING} ({outcome.reason})")
        if not outcome.ok:
            raise ExportError(f"{outcome.reason} (log: {outcome.log})")
        path = Path(outcome.files[recipe.precision])
        _check_loadable(path)
        return _Converted(path, "litert-torch", outcome.notes)

    # -- I/O -----------------------------------------------------------------------------------

    @staticmethod
    def _map_io(
        source: ModelSource, path: Path, converter: str, calib: Dataset | None, workdir: Path
    ) -> tuple[TfliteIO, dict[str, Any], dict[str, Any]]:
        """Read the .tflite I/O and map the source's tensors onto it (see the module docstring).

        Outputs are matched by shape; when several .tflite outputs fit one source output, one probe
        input decides (the source's own outputs against the .tflite's)."""
        io = read_tflite_io(path)
        input_map = _match_inputs(source.inputs, io.inputs, converter)
        probe = None
        if len(io.outputs) > 1 or _ambiguous(source, io, converter):
            probe = _probe_outputs(source, path, io, input_map, calib, workdir)
        output_map = _match_outputs(source.outputs, io.outputs, converter, probe)
        return io, input_map, output_map


def _chosen_file(outcome: WorkerOutcome, recipe: Recipe) -> Path:
    chosen = outcome.files.get(recipe.precision)
    if chosen is None:
        raise ExportError(f"onnx2tf wrote no {recipe.precision} file (got {sorted(outcome.files)})")
    return Path(chosen)


def tflite_operators(path: Path) -> list[str]:
    """Operator names used by a .tflite file: builtin names (``CONV_2D``) and custom codes (``FlexErf``)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(path.read_bytes(), 0)
    names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
    operators: list[str] = []
    for index in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(index)
        custom = code.CustomCode()
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        operators.append(custom.decode() if custom else names.get(builtin, f"BUILTIN_{builtin}"))
    return operators


def flex_ops(path: Path) -> list[str]:
    """The TF Select (``Flex*``) ops a .tflite file needs; empty for a builtin-only model."""
    return sorted({op for op in tflite_operators(path) if op.startswith("Flex")})


def _ambiguous(source: ModelSource, io: TfliteIO, converter: str) -> bool:
    return any(len(_output_candidates(spec, io.outputs, converter)) > 1 for spec in source.outputs)


def _check_loadable(path: Path) -> None:
    """Fail the path (so the alternate one is tried) when LiteRT cannot load the file (e.g. Flex ops)."""
    try:
        read_tflite_io(path)
    except Exception as exc:  # noqa: BLE001 - any interpreter failure disqualifies the file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ExportError(f"the LiteRT interpreter cannot load {path.name}: {first}") from None


def _probe_outputs(
    source: ModelSource,
    path: Path,
    io: TfliteIO,
    input_map: dict[str, Any],
    calib: Dataset | None,
    workdir: Path,
) -> tuple[Arrays, Arrays] | None:
    """The source's outputs and the raw .tflite outputs (keyed by .tflite name) for one input."""
    try:
        feeds = _probe_inputs(source, calib)
        reference = _source_reference(source, feeds, workdir)
        settings = {"signature": io.signature, "input_map": input_map, "output_map": {}}
        actual = TflitePredictor(path, settings, threads=1).run_raw(feeds)
    except Exception:  # noqa: BLE001 - the probe only breaks ties; without it the output order decides
        return None
    return reference, actual


def _probe_inputs(source: ModelSource, calib: Dataset | None) -> Arrays:
    if calib is not None and len(calib) and all(s.name in calib.inputs for s in source.inputs):
        return {s.name: np.asarray(calib.inputs[s.name][:1], dtype=s.dtype) for s in source.inputs}
    from edgepack.models.sample import example_inputs

    return example_inputs(source.inputs, batch=1, seed=0)


def _source_reference(source: ModelSource, feeds: Arrays, workdir: Path) -> Arrays:
    """The source's own outputs: the torch module when there is one, else ONNX Runtime on the hub file."""
    names = [s.name for s in source.outputs]
    if source.torch_module is not None:
        import torch

        with torch.inference_mode():
            result = source.torch_module(*(torch.from_numpy(feeds[s.name]) for s in source.inputs))
        values = [result] if isinstance(result, torch.Tensor) else list(result)
        return {name: value.detach().cpu().numpy() for name, value in zip(names, values)}
    import onnxruntime as ort

    onnx_path = export_onnx(source, workdir / "onnx", dynamic=False)  # cached by the onnx2tf path
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, feeds)))


def _layout(spec: TensorSpec, perm: Sequence[int]) -> str | None:
    if list(perm) == list(range(len(perm))):
        return spec.layout
    return CHANNEL_LAST_LAYOUT.get(len(perm), spec.layout)


def _artifact_specs(
    specs: Sequence[TensorSpec], tensors: Sequence[TfliteTensor], mapping: dict[str, Any], *, keep_preprocess: bool
) -> list[TensorSpec]:
    """The .tflite's own I/O specs, in the source's order (preprocessing carried over for inputs)."""
    by_name = {t.name: t for t in tensors}
    out = []
    for spec in specs:
        entry = mapping[spec.name]
        tensor = by_name[entry["name"]]
        preprocess = spec.preprocess if keep_preprocess else None
        layout = _layout(spec, entry["perm"])
        out.append(TensorSpec(tensor.name, tensor.shape, tensor.dtype, layout, preprocess, tensor.quant))
    return out


# --------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------


def _artifact_perm(spec: TensorSpec) -> tuple[int, ...]:
    """The permutation onnx2tf applies to this input (calibration arrays are saved in that layout)."""
    return _input_perms(spec, "onnx2tf")[0]


def _onnx2tf_request(source: ModelSource, onnx_path: Path, calib: Dataset | None, rundir: Path) -> dict[str, Any]:
    """The worker request; calibration arrays (artifact layout) and sample images are saved as .npy."""
    rundir.mkdir(parents=True, exist_ok=True)
    calib_paths: dict[str, str] = {}
    sample_images: str | None = None
    if calib is not None and len(calib) and all(s.name in calib.inputs for s in source.inputs):
        for spec in source.inputs:
            data = np.asarray(calib.inputs[spec.name][:CALIB_SAMPLES], dtype=spec.dtype)
            data = np.ascontiguousarray(np.transpose(data, _artifact_perm(spec)))
            path = rundir / f"calib_{_safe_file_part(spec.name)}.npy"
            np.save(path, data)
            calib_paths[spec.name] = str(path)
            if sample_images is None and data.ndim == 4 and data.shape[-1] == 3 and spec.dtype.startswith("float"):
                sample_images = str(path)
    return {
        "onnx": str(onnx_path),
        "output_dir": str(rundir / "out"),
        "input_shapes": {s.name: list(s.concrete_shape(1)) for s in source.inputs},
        "keep_ncw_input_names": [s.name for s in source.inputs if len(s.shape) == 3],
        "pseudo_ops": [],
        "calib": calib_paths,
        "sample_images": sample_images,
    }


def _safe_file_part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80] or "input"


def _cache_key(request: dict[str, Any]) -> str:
    """Same ONNX bytes + same calibration bytes + same options -> same onnx2tf output (any workdir)."""
    digest = hashlib.sha256()
    digest.update(Path(request["onnx"]).read_bytes())
    for name, path in sorted(request["calib"].items()):
        digest.update(name.encode())
        digest.update(Path(path).read_bytes())
    options = {k: request[k] for k in ("input_shapes", "keep_ncw_input_names", "pseudo_ops")}
    digest.update(json.dumps(options, sort_keys=True).encode())
    return digest.hexdigest()


def _torch_export(module: Any, args: tuple[Any, ...]) -> Any:
    """``torch.export`` in eval mode (the module's own mode is restored afterwards)."""
    import torch

    was_training = bool(getattr(module, "training", False))
    module.eval()
    try:
        return torch.export.export(module, args, strict=False)
    except Exception as exc:  # noqa: BLE001 - reported as this path's failure
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ExportError(f"torch.export failed: {type(exc).__name__}: {first}") from None
    finally:
        module.train(was_training)


def _litert_request(source: ModelSource, recipe: Recipe, rundir: Path) -> dict[str, Any]:
    """Save the source as a ``torch.export`` program (.pt2) plus its batch-1 sample inputs."""
    import torch

    from edgepack.models.sample import example_inputs

    arrays = example_inputs(source.inputs, batch=1, seed=0)
    sample_paths = []
    for index, spec in enumerate(source.inputs):
        path = rundir / f"sample_{index}.npy"
        np.save(path, arrays[spec.name])
        sample_paths.append(str(path))
    program = source.exported_program
    if program is None:
        args = tuple(torch.from_numpy(arrays[s.name]) for s in source.inputs)
        program = _torch_export(source.torch_module, args)
    program_path = rundir / "model.pt2"
    torch.export.save(program, str(program_path))
    return {
        "program": str(program_path),
        "sample_args": sample_paths,
        "output": str(rundir / "model.tflite"),
        "precision": recipe.precision,
    }
