"""Wall time of a default export, broken down per stage (the manifest's ``timings``).

One export per model of a random-init torchvision model (BatchNorm statistics recalibrated on random inputs,
as in ``compress_vs_peers.py``) with generated calibration data (64 samples) to three host targets
(host-ort, x86-openvino, android-pixel8), the gate on, the export cache off.

    python benchmarks/export_time.py [--models resnet18,mobilenet_v2] [--targets host-ort,x86-openvino,android-pixel8]

Times depend on the CPU and on other load: compare runs from one machine only.
"""

from __future__ import annotations

import torch  # noqa: F401  (torch before any TensorFlow-based toolchain)

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from edgepack import api
from edgepack.compress.quantize import cpu_flags
from edgepack.models.loaders import load_source
from edgepack.models.sample import recalibrate_batchnorm
from edgepack.models.synthetic import domain_dataset_arrays

MODELS = {"resnet18": "torchvision:resnet18", "mobilenet_v2": "torchvision:mobilenet_v2"}
TARGETS = ("host-ort", "x86-openvino", "android-pixel8")
STAGES = ("load", "calibrate", "convert", "parity", "gate", "latency_check", "sensitivity", "placement", "total")
CALIB_SAMPLES = 64


def isa_line() -> str:
    flags = cpu_flags()
    found = [name for name, flag in (("AVX2", "avx2"), ("AVX-512 VNNI", "avx512_vnni"), ("AVX-VNNI", "avx_vnni"),
                                     ("AMX", "amx_int8")) if flag in flags]
    return ", ".join(found) or "no AVX2"


def export_once(model: str, targets: tuple[str, ...], workdir: Path) -> tuple[float, dict, dict]:
    started = time.perf_counter()
    source = recalibrate_batchnorm(load_source(MODELS[model], random_weights=True))
    calib = workdir / f"{model}-calib.npz"
    np.savez(calib, **domain_dataset_arrays(source.inputs, CALIB_SAMPLES, seed=3))
    result = api.export(source, list(targets), calib=calib, out=workdir / "dist", name=model, cache=False)
    return time.perf_counter() - started, result.manifest, result.timings


def table(model: str, wall: float, manifest: dict, bundle: dict) -> list[str]:
    rows = [f"| {model} target | recipe | " + " | ".join(STAGES) + " |", "|---|---|" + "---:|" * len(STAGES)]
    for target, entry in manifest["targets"].items():
        timings = entry.get("timings") or {}
        cells = " | ".join(f"{timings[s]:.1f}" if s in timings else "–" for s in STAGES)
        rows.append(f"| {target} | {entry.get('recipe') or entry['status']} | {cells} |")
    rows.append(f"| **bundle** | | {bundle.get('load', 0):.1f} | | | | | | | | **{bundle.get('total', wall):.1f}** |")
    rows.append(f"\nwall time incl. model load and BatchNorm recalibration: {wall:.1f} s")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenet_v2")
    parser.add_argument("--targets", default=",".join(TARGETS))
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"# {time.strftime('%Y-%m-%d')} · {platform.processor() or platform.machine()} · {isa_line()} · "
          f"{torch.get_num_threads()} torch threads · {CALIB_SAMPLES} calibration samples · gate on")
    with tempfile.TemporaryDirectory(prefix="edgepack-export-time-") as tmp:
        for model in args.models.split(","):
            wall, manifest, bundle = export_once(model, tuple(args.targets.split(",")), Path(tmp))
            print()
            print("\n".join(table(model, wall, manifest, bundle)), flush=True)


if __name__ == "__main__":
    main()
