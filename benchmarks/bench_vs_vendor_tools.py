"""edgepack's host runner vs the vendors' own latency tools, on the same artifacts, in one run.

For each model (demo:digits, random-init torchvision resnet18 and mobilenet_v2, exported by edgepack to
host-ort and x86-openvino at fp32) and runtime, p50 latency at batch 1 and 2 threads from:

* edgepack: ``HostRunner`` (the ``edgepack bench --runner host`` code path, warm-up ``auto``);
* OpenVINO: ``benchmark_app`` (the tool shipped in the openvino wheel) with the same settings edgepack's
  predictor uses: ``-d CPU -hint latency -nthreads 2 -infer_precision f32 -api sync``; its "Median";
* ONNX Runtime: ``onnxruntime_perf_test`` is not in the PyPI wheel, so its measurement is reproduced: an
  ``InferenceSession`` with the same options (2 intra-op threads, ORT_ENABLE_ALL), ``session.run`` timed
  per iteration after a warm-up, median of the samples.

Edgepack and the vendor tool alternate for ``--rounds`` rounds so that both see the same machine state;
the p50 columns are the medians of the per-round p50s and the ratio is the median of the per-round ratios
edgepack / vendor, which should lie within ±5 %. Each round also runs the vendor tool a second time: the
A/A column (vendor / vendor) shows how far two runs of one tool land apart here, the floor below which an
edgepack / vendor difference is not resolvable on this machine. edgepack's OpenVINO numbers are on the runtime's clock
(``InferRequest.latency``), the one ``benchmark_app`` reports; the whole Python call is printed beside them.

Then edgepack's per-iteration overhead, two ways: (1) A/B: a ~1 ms MLP (ONNX made here, exported by
edgepack to host-ort) timed by the host runner and by a bare ``session.run`` loop, interleaved rounds;
(2) the host runner's measurement loop around a no-op predictor vs a bare ``perf_counter`` loop, which
isolates what the harness adds to each sample from the model's own noise. Target: < 1 % of 1 ms.

On a shared or loaded machine the A/B ratios swing by tens of percent between runs; read them together
with the load average (printed) and prefer a quiet machine.

    python benchmarks/bench_vs_vendor_tools.py [--models digits,resnet18,mobilenet_v2] [--seconds 2] [--rounds 5]

Runs in about 6-8 minutes on 2 cores (exports included). Absolute times depend on the CPU; compare the
ratios of one run only.
"""

from __future__ import annotations

import torch  # noqa: F401  (torch before any TensorFlow-based toolchain)

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgepack import api
from edgepack.device_bench.bench import artifact_from_manifest, bench_inputs
from edgepack.bundle.writer import read_manifest
from edgepack.device_bench.config import BenchConfig
from edgepack.device_bench.runners.host import HostRunner
from edgepack.exporters.base import Artifact
from edgepack.models.sample import example_inputs

MODELS = {"digits": "demo:digits", "resnet18": "torchvision:resnet18", "mobilenet_v2": "torchvision:mobilenet_v2"}
TARGETS = {"host-ort": "onnxruntime", "x86-openvino": "openvino"}
THREADS = 2
_MEDIAN = re.compile(r"Median:\s+([0-9.]+)\s*(ms|us)\b")
_UNIT_MS = {"ms": 1.0, "us": 1e-3}


@dataclass
class Row:
    model: str
    target: str
    tool: str
    edgepack_ms: float
    vendor_ms: float
    call_ms: float
    """edgepack's p50 of the whole Python predictor call (equal to ``edgepack_ms`` on the wall clock)."""
    ratio: float
    """Median of the per-round ratios (each round times both tools back to back, so drift between
    rounds cancels out)."""
    spread: tuple[float, float]
    """Smallest and largest per-round ratio."""
    control: float
    """Median per-round ratio of the vendor tool against itself (A/A): the machine's own spread."""


def edgepack_p50(artifact: Artifact, inputs, seconds: float) -> tuple[float, float]:
    """(p50 on the host runner's clock, p50 of the whole predictor call)."""
    config = BenchConfig(warmup="auto", min_iters=50, min_seconds=seconds, threads=THREADS)
    result = HostRunner().run(artifact, config, inputs=inputs)
    return result.p50, result.wall_p50_ms if result.wall_p50_ms is not None else result.p50


def ort_loop_p50(model: Path, feeds: dict[str, np.ndarray], seconds: float, warmup: int = 20) -> float:
    """onnxruntime_perf_test's measurement in Python: one session, each run timed, median."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for _ in range(warmup):
        session.run(names, feeds)
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < 50 or time.perf_counter() - started < seconds:
        before = time.perf_counter()
        session.run(names, feeds)
        samples.append((time.perf_counter() - before) * 1000.0)
    return statistics.median(samples)


def benchmark_app_p50(xml: Path, feeds: dict[str, np.ndarray], seconds: float) -> float:
    """benchmark_app's "Median" latency (its -t takes whole seconds)."""
    tool = shutil.which("benchmark_app")
    argv = [tool] if tool else [sys.executable, "-m", "openvino.tools.benchmark.main"]
    # benchmark_app refuses -nthreads next to -hint; the same properties edgepack's predictor compiles with
    # (OpenVinoPredictor) go in through -load_config instead.
    config = Path(tempfile.mkstemp(suffix=".json", prefix="benchmark_app_")[1])
    # The IR keeps the batch dimension dynamic, as edgepack compiles it: -data_shape feeds batch 1 without
    # reshaping the model to static shapes (which -shape would do, and edgepack does not).
    shapes = ",".join(f"{name}[{','.join(str(d) for d in array.shape)}]" for name, array in feeds.items())
    config.write_text(json.dumps({"CPU": {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": str(THREADS),
                                          "INFERENCE_PRECISION_HINT": "f32"}}))  # fmt: skip
    argv += ["-m", str(xml), "-d", "CPU", "-hint", "latency", "-load_config", str(config), "-api", "sync",
             "-data_shape", shapes, "-t", str(max(1, round(seconds)))]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    finally:
        config.unlink(missing_ok=True)
    output = done.stdout + done.stderr
    match = _MEDIAN.search(output)
    if done.returncode != 0 or match is None:
        tail = output.strip().splitlines()[-3:]
        raise RuntimeError(f"benchmark_app failed ({done.returncode}): {' | '.join(tail)}")
    return float(match[1]) * _UNIT_MS[match[2]]


def compare(model: str, bundle: Path, seconds: float, rounds: int) -> list[Row]:
    """Per runtime: edgepack, the vendor tool and the vendor tool once more (the A/A control: how far two
    runs of the *same* tool land apart on this machine), in an order rotated every round."""
    manifest = read_manifest(bundle)
    rows: list[Row] = []
    for target, runtime in TARGETS.items():
        artifact = artifact_from_manifest(bundle, target, manifest)
        inputs = bench_inputs(manifest, artifact)
        feeds = example_inputs(inputs, batch=1, seed=0)

        def vendor() -> float:
            if runtime == "onnxruntime":
                return ort_loop_p50(artifact.path, feeds, seconds)
            return benchmark_app_p50(artifact.path, feeds, seconds)

        ours: list[float] = []
        calls: list[float] = []
        theirs: list[float] = []
        again: list[float] = []
        for index in range(rounds):
            steps = [
                lambda: _record(edgepack_p50(artifact, inputs, seconds), ours, calls),
                lambda: theirs.append(vendor()),
                lambda: again.append(vendor()),
            ]
            for step in steps[index % 3 :] + steps[: index % 3]:
                step()
        tool = "InferenceSession loop (perf_test method)" if runtime == "onnxruntime" else "benchmark_app"
        ratios = [a / b for a, b in zip(ours, theirs)]
        rows.append(Row(model, target, tool, edgepack_ms=statistics.median(ours), vendor_ms=statistics.median(theirs),
                        call_ms=statistics.median(calls), ratio=statistics.median(ratios),
                        spread=(min(ratios), max(ratios)),
                        control=statistics.median(a / b for a, b in zip(again, theirs))))
    return rows


def _record(pair: tuple[float, float], ours: list[float], calls: list[float]) -> None:
    ours.append(pair[0])
    calls.append(pair[1])


def _mlp_onnx(path: Path, width: int) -> None:
    layers = [torch.nn.Linear(width, width) for _ in range(4)]
    module = torch.nn.Sequential(*[m for layer in layers for m in (layer, torch.nn.ReLU())]).eval()
    torch.onnx.export(module, (torch.randn(1, width),), str(path), input_names=["x"], output_names=["y"], dynamo=False)


def overhead(work: Path, seconds: float, rounds: int) -> tuple[float, float, float]:
    """(edgepack p50 ms, bare loop p50 ms, relative overhead) on a ~1 ms MLP."""
    width = 1024
    source = work / "mlp.onnx"
    for _ in range(4):  # widen until the bare loop takes about a millisecond
        _mlp_onnx(source, width)
        bare = ort_loop_p50(source, {"x": np.random.default_rng(0).standard_normal((1, width), dtype=np.float32)}, 0.5)
        if bare >= 0.7:
            break
        width = int(width * min(2.0, (1.0 / max(bare, 1e-3)) ** 0.5) / 64 + 1) * 64
    result = api.export(str(source), ["host-ort"], out=work / "mlp_out", recipe_chain=["fp32"])
    manifest = read_manifest(result.bundle)
    artifact = artifact_from_manifest(result.bundle, "host-ort", manifest)
    inputs = bench_inputs(manifest, artifact)
    feeds = example_inputs(inputs, batch=1, seed=0)
    ratios, ours, theirs = [], [], []
    for index in range(max(rounds, 3) * 2):
        pair = [lambda: ours.append(edgepack_p50(artifact, inputs, seconds)[0]),
                lambda: theirs.append(ort_loop_p50(artifact.path, feeds, seconds))]  # fmt: skip
        for step in pair if index % 2 == 0 else reversed(pair):
            step()
        ratios.append(ours[-1] / theirs[-1] - 1.0)
    return statistics.median(ours), statistics.median(theirs), statistics.median(ratios)


def loop_cost_us(iterations: int = 20000) -> tuple[float, float]:
    """Median timed-region cost of the host runner's measurement loop around a no-op predictor, and of a
    bare ``perf_counter`` loop around the same call (microseconds): the overhead edgepack adds to every
    latency sample, free of the model's own noise."""
    from edgepack.device_bench.energy import UnavailableMeter
    from edgepack.device_bench.runners.host import _measure, _PeakRss  # the loop HostRunner.run uses

    from edgepack.exporters.base import CallablePredictor

    noop = CallablePredictor(lambda feeds: feeds)

    config = BenchConfig(warmup=100, min_iters=iterations, min_seconds=0.0, max_iters=iterations)
    run = _measure(noop, {}, config, "noop", UnavailableMeter("not measured"), _PeakRss(), time.monotonic() + 60)
    bare: list[float] = []
    for _ in range(iterations):
        before = time.perf_counter()
        noop({})
        bare.append((time.perf_counter() - before) * 1000.0)
    return statistics.median(run.samples) * 1000.0, statistics.median(bare) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum timed seconds per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per tool pair (median reported)")
    args = parser.parse_args()
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")

    load = ", load average " + " ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else ""
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores{load}; {THREADS} threads, batch 1, fp32; {args.rounds} rounds of >= {args.seconds:g} s")
    started = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="edgepack-vendor-bench-") as tmp:
        work = Path(tmp)
        for name in names:
            result = api.export(MODELS[name], list(TARGETS), out=work / name, recipe_chain=["fp32"],
                                random_weights=MODELS[name].startswith("torchvision:"))
            failed = {r.profile.id: r.error for r in result.results if r.error}
            if failed:
                print(f"{name}: export failed: {failed}")
                continue
            rows += compare(name, result.bundle, args.seconds, args.rounds)
        print(f"\n{'model':14} {'target':13} {'vendor tool':42} {'edgepack p50':>12} {'vendor p50':>11} {'ratio':>7}"
              f"  {'rounds min-max':>14}  {'A/A':>6}  {'edgepack whole call p50':>23}")
        for row in rows:
            flag = "" if abs(row.ratio - 1.0) <= 0.05 else "  (outside ±5 %)"
            print(f"{row.model:14} {row.target:13} {row.tool:42} {row.edgepack_ms:10.3f} ms {row.vendor_ms:8.3f} ms "
                  f"{row.ratio:7.3f}  {row.spread[0]:6.3f}-{row.spread[1]:.3f}  {row.control:6.3f}  {row.call_ms:20.3f} ms{flag}")  # fmt: skip
        ours, bare, extra = overhead(work, args.seconds, args.rounds)
    loop_us, bare_us = loop_cost_us()
    print(f"\nper-iteration overhead on a ~1 ms MLP (host-ort), A/B: edgepack p50 {ours:.4f} ms vs bare session.run "
          f"loop {bare:.4f} ms -> {extra * 100:+.2f} % (median of per-round ratios; includes machine noise)")
    added = (loop_us - bare_us) / (bare * 1000.0)
    print(f"harness loop alone (no-op predictor): {loop_us:.3f} us vs bare perf_counter loop {bare_us:.3f} us per "
          f"sample -> {added * 100:+.3f} % of the {bare:.3f} ms model ({'< 1 %' if added < 0.01 else '>= 1 %'})")
    # fmt: skip
    print(f"# total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
