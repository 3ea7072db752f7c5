"""edgepack's shipped artifact vs fp32 and the peers' default int8, side by side in one run.

For each model and runtime: p50 latency (batch 1, 2 threads, all predictors of a runtime timed in
interleaved rounds), speed ratio to that runtime's fp32 artifact, artifact size, and accuracy (digits:
top-1 on the labelled eval split) or fidelity (random-init torchvision models with BatchNorm statistics
recalibrated on random inputs so outputs are not degenerate: top-1 agreement and cosine vs fp32 on
held-out inputs). Peers' defaults: ONNX Runtime ``quantize_static`` with its default
arguments, NNCF ``nncf.quantize`` with its default arguments. ExecuTorch, ncnn and MNN rows run each runtime's
own Python module (host x86 kernels, not the phone's or the board's); their quantizers are the ones edgepack
drives, so their "peer default" is edgepack's int8 candidate. RKNN is left out: its simulator has no latency.

    python benchmarks/compress_vs_peers.py [--models resnet18,mobilenet_v2,...] [--runtimes ort,openvino]

Absolute times depend on the CPU (AVX2 vs AVX-512 VNNI): compare ratios from one run only.
"""

from __future__ import annotations

import torch  # noqa: F401  (torch before any TensorFlow-based toolchain)

import argparse
import contextlib
import io
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack import api
from edgepack.compress.quantize import cpu_flags
from edgepack.data.dataset import Dataset
from edgepack.device_bench.compare import time_block
from edgepack.exporters.base import Predictor
from edgepack.exporters.onnx.hub import export_onnx
from edgepack.exporters.openvino.predictor import OpenVinoPredictor
from edgepack.exporters.ort.predictor import OrtPredictor
from edgepack.models.loaders import load_source
from edgepack.models.sample import recalibrate_batchnorm
from edgepack.models.synthetic import domain_dataset_arrays
from edgepack.models.source import ModelSource

MODELS = {
    "digits": "demo:digits",
    "resnet18": "torchvision:resnet18",
    "resnet50": "torchvision:resnet50",
    "mobilenet_v2": "torchvision:mobilenet_v2",
    "mobilenet_v3_small": "torchvision:mobilenet_v3_small",
}
TARGETS = {"ort": "host-ort", "openvino": "x86-openvino", "tflite": "android-pixel8",
           "executorch": "android-executorch", "ncnn": "raspberry-pi5-ncnn", "mnn": "android-mnn"}
BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int8-dynamic": 8, "uint8": 8, "a16w8": 8, "int4-weight": 4}
"""Weight bits of a shipped precision, for the size target (mixed precisions are not checked)."""


@dataclass
class Row:
    model: str
    runtime: str
    variant: str
    p50_ms: float
    size_bytes: int
    quality: str
    ratio: float = 1.0
    size_limit: int | None = None
    """1.05 x params x bits / 8 + 64 KiB (issue target), when the weight bits are known."""

    def size_check(self) -> str:
        if self.size_limit is None:
            return "n/a"
        return f"{'ok' if self.size_bytes <= self.size_limit else 'OVER'} (≤ {self.size_limit / 1e6:.2f} MB)"


def parameter_count(source: ModelSource) -> int:
    if source.torch_module is not None:
        return sum(p.numel() for p in source.torch_module.parameters())
    import onnx

    model = onnx.load(str(source.onnx_path), load_external_data=False)
    return sum(int(np.prod(init.dims)) for init in model.graph.initializer)


def size_limit(source: ModelSource, bits: int | None) -> int | None:
    return None if bits is None else int(1.05 * parameter_count(source) * bits / 8 + 64 * 1024)


MIN_BLOCK = 5


def p50_interleaved(predictors: dict[str, Predictor], inputs: dict[str, np.ndarray], rounds: int = 9, seconds: float = 8.0) -> dict[str, float]:
    """Median ms per inference for each predictor, alternating blocks so all see the same machine state."""
    for predictor in predictors.values():
        for _ in range(3):
            predictor(inputs)
    probe = max(1e-4, max(time_block(p, inputs, 1) for p in predictors.values()))
    # At least MIN_BLOCK timed calls per block (time_block leaves the first call after a switch untimed).
    iterations = max(MIN_BLOCK, int(seconds * 1000 / (len(predictors) * rounds * probe)))
    samples: dict[str, list[float]] = {name: [] for name in predictors}
    names = list(predictors)
    for index in range(rounds):
        for name in names if index % 2 == 0 else reversed(names):
            samples[name].append(time_block(predictors[name], inputs, iterations))
    return {name: statistics.median(values) for name, values in samples.items()}


def _quality(source: ModelSource, predictor: Predictor, reference: Predictor, data: Dataset) -> str:
    output = source.outputs[0].name
    ref = np.concatenate([reference(b)[output] for b in data.batches()])
    got = np.concatenate([predictor(b)[output] for b in data.batches()])
    if data.labels is not None:
        return f"top1 {np.mean(np.argmax(got, 1) == data.labels):.4f}"
    cos = np.mean([np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30) for a, b in zip(ref, got)])
    return f"agree {np.mean(np.argmax(got, 1) == np.argmax(ref, 1)):.3f} cos {cos:.4f}"


def _data(source: ModelSource, work: Path) -> tuple[Path, Dataset]:
    if source.kind == "demo":
        calib, evaluation = source.extra["calib"], source.extra["eval"]
    else:
        calib = Dataset(domain_dataset_arrays(source.inputs, 64, seed=0), None, "synthetic")
        evaluation = Dataset(domain_dataset_arrays(source.inputs, 32, seed=1000), None, "synthetic")
    path = work / "calib.npz"
    np.savez(path, **calib.inputs)
    return path, evaluation


class _Reader:
    def __init__(self, path: Path) -> None:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        self._it = iter([{k: v[i : i + 1] for k, v in arrays.items()} for i in range(len(next(iter(arrays.values()))))])

    def get_next(self):
        return next(self._it, None)


def ort_rows(name: str, source: ModelSource, work: Path, calib: Path, evaluation: Dataset) -> list[Row]:
    from onnxruntime.quantization import quantize_static

    fp32_path = export_onnx(source, work / "onnx", dynamic=True)
    peer_path = work / "ort_peer_default.onnx"
    quantize_static(str(fp32_path), str(peer_path), _Reader(calib))
    variants = {
        "fp32": (OrtPredictor(fp32_path), fp32_path.stat().st_size, 32),
        "peer default int8": (OrtPredictor(peer_path), peer_path.stat().st_size, 8),
        **_edgepack_variants(source, "host-ort", calib, work, lambda path, artifact: OrtPredictor(path)),
    }
    return _rows(name, "onnxruntime", source, variants, evaluation)


EDGEPACK_VARIANTS = (("edgepack int8 candidate", {"recipe_chain": ["int8"], "max_drop": 1.0, "max_slowdown": 1.0}),
                     ("edgepack shipped", {}))


def _edgepack_variants(source: ModelSource, target: str, calib: Path, work: Path, make, variants=EDGEPACK_VARIANTS) -> dict:
    """edgepack's int8 candidate (gate off, to show its speed and fidelity) and what the gate actually ships;
    ``make(path, artifact_entry)`` opens a predictor."""
    out = {}
    for label, kwargs in variants:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            result = api.export(source, [target], calib=calib, out=work / "bundles" / label.replace(" ", "-"), **kwargs)
        entry = result.manifest["targets"][target]
        if entry["artifact"] is None:
            continue
        artifact = entry["artifact"]
        name = label if label == "fp32" else f"{label} ({entry['recipe']})"
        out[name] = (make(result.bundle / artifact["path"], artifact), artifact["bytes"], BITS.get(artifact["precision"]))
    return out


def tflite_rows(name: str, source: ModelSource, work: Path, calib: Path, evaluation: Dataset) -> list[Row]:
    """LiteRT (XNNPACK) on this host: edgepack's fp32, its int8 candidate and what it ships for Android.

    The peers' TFLite int8 default (onnx2tf -oiqt) is the same converter edgepack drives, so its row is
    edgepack's int8 candidate; onnx2tf's own default downloads sample images, which edgepack never lets it."""
    from edgepack.exporters.tflite.model_io import TflitePredictor

    variants = (("fp32", {"recipe_chain": ["fp32"]}),) + EDGEPACK_VARIANTS
    made = _edgepack_variants(source, "android-pixel8", calib, work,
                              lambda path, artifact: TflitePredictor(path, artifact["settings"]), variants)
    return _rows(name, "tflite", source, made, evaluation)


def openvino_rows(name: str, source: ModelSource, work: Path, calib: Path, evaluation: Dataset) -> list[Row]:
    import nncf
    import openvino as ov

    hub = export_onnx(source, work / "onnx", dynamic=True)
    fp32_xml, peer_xml = work / "ov_fp32.xml", work / "ov_nncf_default.xml"
    model = ov.convert_model(str(hub))
    ov.save_model(model, str(fp32_xml), compress_to_fp16=False)
    with np.load(calib) as npz:
        batches = [{k: npz[k][i : i + 1] for k in npz.files} for i in range(len(npz[npz.files[0]]))]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ov.save_model(nncf.quantize(ov.convert_model(str(hub)), nncf.Dataset(batches)), str(peer_xml))
    size = lambda xml: xml.stat().st_size + xml.with_suffix(".bin").stat().st_size  # noqa: E731
    variants = {
        "fp32": (OpenVinoPredictor(fp32_xml), size(fp32_xml), 32),
        "peer NNCF default": (OpenVinoPredictor(peer_xml), size(peer_xml), 8),
        **_edgepack_variants(source, "x86-openvino", calib, work, lambda path, artifact: OpenVinoPredictor(path)),
    }
    return _rows(name, "openvino", source, variants, evaluation)


def plugin_rows(runtime: str):
    """fp32, the int8 candidate and the shipped artifact of a runtime added as a plug-in, run by its own predictor."""
    from edgepack.device_bench.runners.base import artifact_from_entry
    from edgepack.exporters.registry import get_exporter

    def rows(name: str, source: ModelSource, work: Path, calib: Path, evaluation: Dataset) -> list[Row]:
        target = TARGETS[runtime]

        def make(path: Path, entry: dict) -> Predictor:
            bundle = path.parents[len(Path(entry["path"]).parts) - 1]
            return get_exporter(runtime).predictor(artifact_from_entry(bundle, target, runtime, entry), source)

        from edgepack.compress.recipe import load_recipes
        from edgepack.targets.registry import load_registry

        book = load_recipes()
        int8 = next(r for r in load_registry().get(target).recipes if book.get(r).precision == "int8")
        variants = (("fp32", {"recipe_chain": ["fp32"]}),
                    ("edgepack int8 candidate", {"recipe_chain": [int8], "max_drop": 1.0, "max_slowdown": 1.0}),
                    ("edgepack shipped", {}))
        return _rows(name, runtime, source, _edgepack_variants(source, target, calib, work / runtime, make, variants),
                     evaluation)

    return rows


def _rows(name: str, runtime: str, source: ModelSource, variants: dict, evaluation: Dataset) -> list[Row]:
    predictors = {k: v[0] for k, v in variants.items()}
    reference = predictors["fp32"]
    p50 = p50_interleaved(predictors, evaluation.batch(0))
    rows = [Row(name, runtime, k, p50[k], variants[k][1], _quality(source, predictors[k], reference, evaluation),
                size_limit=size_limit(source, variants[k][2])) for k in predictors]
    for row in rows:
        row.ratio = p50["fp32"] / row.p50_ms
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--runtimes", default=",".join(TARGETS))
    args = parser.parse_args()
    isa = "AVX-512 VNNI" if {"avx512_vnni"} & cpu_flags() else ("AVX-VNNI" if "avx_vnni" in cpu_flags() else "AVX2, no VNNI")
    print(f"# {time.strftime('%Y-%m-%d')} · {platform.processor() or platform.machine()} · {isa} · batch 1, 2 threads")
    print(f"| model | runtime | variant | p50 ms | × fp32 | size | size target | accuracy / fidelity |\n|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        source = load_source(MODELS[name], random_weights=MODELS[name].startswith("torchvision:"))
        if source.kind != "demo":
            source = recalibrate_batchnorm(source)
        with tempfile.TemporaryDirectory(prefix="edgepack-bench-") as tmp:
            work = Path(tmp)
            calib, evaluation = _data(source, work)
            for runtime in args.runtimes.split(","):
                builder = {"ort": ort_rows, "openvino": openvino_rows, "tflite": tflite_rows}.get(runtime) \
                    or plugin_rows(runtime)
                for row in builder(name, source, work, calib, evaluation):
                    print(f"| {row.model} | {row.runtime} | {row.variant} | {row.p50_ms:.3f} | {row.ratio:.2f}× | "
                          f"{row.size_bytes / 1e6:.2f} MB | {row.size_check()} | {row.quality} |", flush=True)


if __name__ == "__main__":
    main()
