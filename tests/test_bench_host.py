"""Host runner on a real bundle (ONNX Runtime, OpenVINO, TFLite), bundle handling, and the energy and
thermal sensor readers on sample data written here."""

from __future__ import annotations

import shutil
import stat
import time
from pathlib import Path

import pytest

from edgepack import api
from edgepack.bundle.writer import read_manifest
from edgepack.device_bench.bench import artifact_from_manifest, bench_bundle, bench_inputs
from edgepack.device_bench.config import BenchConfig, BenchResult
from edgepack.device_bench.energy import (
    RaplMeter,
    TegrastatsMeter,
    UnavailableMeter,
    input_power_mw,
    open_meter,
    parse_tegrastats_line,
    rapl_domains,
    read_thermal_zones,
    wrap_delta_uj,
)
from edgepack.device_bench.runners.base import runner_for_uri
from edgepack.device_bench.runners.host import HostRunner
from edgepack.errors import BundleError, InputError, UnsupportedError

TARGETS = ["host-ort", "x86-openvino", "android-pixel8"]
RUNTIMES = {"host-ort": "onnxruntime", "x86-openvino": "openvino", "android-pixel8": "tflite"}
CONFIG = BenchConfig(warmup="auto", min_iters=40, min_seconds=0.2)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = api.export("demo:digits", TARGETS, out=tmp_path_factory.mktemp("bench_bundle"), recipe_chain=["fp32"])
    assert result.ok, {r.profile.id: r.error for r in result.results}
    return result.bundle


@pytest.mark.parametrize("target", TARGETS)
def test_host_runner_measures_each_runtime(bundle: Path, target: str) -> None:
    [result] = bench_bundle(bundle, target, "host", CONFIG)
    assert result.runner == "host" and result.target == target and result.runtime == RUNTIMES[target]
    assert result.iterations >= CONFIG.min_iters
    assert 0 < result.min <= result.p50 <= result.p90 <= result.p95 <= result.p99 <= result.max
    assert result.ci95_p50[0] <= result.p50 <= result.ci95_p50[1]
    assert result.ci95_p99[0] <= result.p99 <= result.ci95_p99[1]
    assert result.cold_start_ms is not None and result.cold_start_ms > result.p50
    assert result.load_ms is not None and result.first_inference_ms is not None
    assert result.peak_mem_mb is not None and result.peak_mem_mb > 0
    if result.energy_mj_per_inference is None:
        assert result.energy_reason
    else:
        assert result.energy_mj_per_inference > 0 and result.energy_method
    assert (result.thermal is None) == bool(result.thermal_reason)
    assert result.sustained is None and "not requested" in (result.sustained_reason or "")
    env = result.env
    assert env["runtime"] == RUNTIMES[target] and env["threads"] == 2 and env["hostname"]
    assert env["governor"] is not None or env["governor_reason"]
    assert "outliers" in result.outlier_policy and "not dropped" in result.outlier_policy
    assert BenchResult.from_json(result.to_json()) == result


CLOCKS = {
    "host-ort": "onnxruntime InferenceSession.run, timed around the call (onnxruntime_perf_test's clock)",
    "x86-openvino": "openvino InferRequest.latency (benchmark_app's clock)",
    "android-pixel8": "wall",
}


@pytest.mark.parametrize("target", TARGETS)
def test_latency_clock_is_the_runtimes_own_where_it_keeps_one(bundle: Path, target: str) -> None:
    config = BenchConfig(warmup=3, min_iters=30, min_seconds=0.0, sustained_seconds=0.1)
    [result] = bench_bundle(bundle, target, "host", config)
    assert result.clock == CLOCKS[target]
    if result.clock == "wall":
        assert result.wall_p50_ms is None
    else:
        # Each wall-clock call contains the runtime's timed inference, so its median cannot be smaller.
        assert result.wall_p50_ms is not None and result.wall_p50_ms >= result.p50 > 0
        assert result.sustained is not None and all(ms > 0 for _, ms in result.sustained)


def test_threads_fixed_warmup_and_sustained(bundle: Path) -> None:
    config = BenchConfig(warmup=3, min_iters=20, min_seconds=0.05, threads=1, sustained_seconds=0.3)
    [result] = bench_bundle(bundle, "host-ort", "host", config)
    assert result.env["threads"] == 1
    assert result.warmup_mode == "fixed" and result.warmup_discarded == 3
    assert result.sustained is not None and len(result.sustained) > 5
    times = [t for t, _ in result.sustained]
    assert times == sorted(times) and times[-1] < 0.3 + 0.1
    assert all(ms > 0 for _, ms in result.sustained)


def test_every_target_when_none_given(bundle: Path) -> None:
    results = bench_bundle(bundle, None, "host", BenchConfig(warmup=2, min_iters=10, min_seconds=0.0))
    assert sorted(r.target for r in results) == sorted(TARGETS)


def test_artifact_from_manifest(bundle: Path) -> None:
    manifest = read_manifest(bundle)
    tflite = artifact_from_manifest(bundle, "android-pixel8", manifest)
    assert tflite.runtime == "tflite" and tflite.path.is_file() and "input_map" in tflite.settings
    # TFLite tensors are channel-last; its predictor takes the source's NCHW input, which is what the bench feeds.
    assert [s.shape for s in bench_inputs(manifest, tflite)] == [(1, 1, 8, 8)]
    ort = artifact_from_manifest(bundle, "host-ort", manifest)
    assert [s.shape for s in bench_inputs(manifest, ort)] == [(1, 1, 8, 8)]
    assert all(f.is_relative_to(bundle) for f in ort.files)


def test_bundle_problems_are_clear_errors(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no target 'jetson-orin'"):
        bench_bundle(bundle, "jetson-orin", "host", CONFIG)
    with pytest.raises(UnsupportedError, match="CPU only"):
        bench_bundle(bundle, "host-ort", "host", BenchConfig(accelerator="gpu"))
    with pytest.raises(InputError, match="takes no address"):
        runner_for_uri("host://somewhere")
    assert isinstance(runner_for_uri("host"), HostRunner)
    copy = tmp_path / "copy.edgepack"
    shutil.copytree(bundle, copy)
    model = copy / "artifacts" / "host-ort" / "model.onnx"
    model.chmod(model.stat().st_mode | stat.S_IWUSR)
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="modified"):
        bench_bundle(copy, "host-ort", "host", CONFIG)


def test_config_validation_and_json() -> None:
    config = BenchConfig(warmup=7, min_iters=5, min_seconds=0.5, threads=4, accelerator="cpu", sustained_seconds=2)
    assert BenchConfig.from_json(config.to_json()) == config
    for bad in ({"min_iters": 0}, {"warmup": "later"}, {"threads": 0}, {"min_seconds": -1}, {"timeout_s": 0}):
        with pytest.raises(InputError):
            BenchConfig.from_dict(bad)
    with pytest.raises(InputError, match="unknown key"):
        BenchConfig.from_dict({"iterations": 5})


# --------------------------------------------------------------------------------------------------
# Energy and thermal readers on sample data
# --------------------------------------------------------------------------------------------------


def _zone(root: Path, name: str, kind: str, energy: int, max_range: int) -> Path:
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "name").write_text(f"{kind}\n")
    (zone / "energy_uj").write_text(f"{energy}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_range}\n")
    return zone


def test_rapl_wraparound_and_domains(tmp_path: Path) -> None:
    assert wrap_delta_uj(100, 350, 1000) == 250
    assert wrap_delta_uj(900, 50, 999) == 150  # 900 -> 999 -> 0 -> 50
    root = tmp_path / "powercap"
    package = _zone(root, "intel-rapl:0", "package-0", 990_000, 999_999)
    _zone(root, "intel-rapl:0:0", "core", 5, 999_999)  # sub-zone: overlaps the package, ignored
    _zone(root, "intel-rapl:1", "psys", 7, 999_999)  # platform domain: overlaps, ignored
    domains = rapl_domains(root)
    assert not isinstance(domains, str) and [d.name for d in domains] == ["package-0"]
    meter = open_meter(root)
    assert isinstance(meter, RaplMeter)
    meter.start()
    (package / "energy_uj").write_text("2000\n")  # wrapped: 10_000 uJ to the top, then 2_000
    meter.poll()
    (package / "energy_uj").write_text("5000\n")
    reading = meter.stop()
    assert reading.mj == pytest.approx(15.0) and "RAPL package-0" in (reading.method or "")


def test_rapl_unavailable_has_a_reason(tmp_path: Path) -> None:
    assert "does not exist" in str(rapl_domains(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    assert "no RAPL domains" in str(rapl_domains(tmp_path / "empty"))
    reading = UnavailableMeter("no sensor").stop()
    assert reading.mj is None and reading.reason == "no sensor"


TEGRASTATS_ORIN = (
    "11-23-2026 10:35:27 RAM 2180/7764MB (lfb 1117x4MB) SWAP 0/3882MB (cached 0MB) "
    "CPU [2%@1420,1%@1420,off,off] EMC_FREQ 0% GR3D_FREQ 0% CPU@41.5C GPU@40C "
    "VDD_IN 5000mW/4800mW VDD_CPU_GPU_CV 600mW/550mW VDD_SOC 1400mW/1400mW"
)
TEGRASTATS_NANO = (
    "RAM 1838/3964MB (lfb 92x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) CPU [5%@102,3%@102] "
    "EMC_FREQ 0%@1600 GR3D_FREQ 0%@76 APE 25 PLL@24C CPU@26.5C POM_5V_IN 2516/2516 POM_5V_GPU 0/0 POM_5V_CPU 394/394"
)


def test_tegrastats_lines() -> None:
    orin = parse_tegrastats_line(TEGRASTATS_ORIN)
    assert orin == {"VDD_IN": (5000.0, 4800.0), "VDD_CPU_GPU_CV": (600.0, 550.0), "VDD_SOC": (1400.0, 1400.0)}
    nano = parse_tegrastats_line(TEGRASTATS_NANO)
    assert nano == {"POM_5V_IN": (2516.0, 2516.0), "POM_5V_GPU": (0.0, 0.0), "POM_5V_CPU": (394.0, 394.0)}
    assert "RAM" not in orin and "SWAP" not in nano and "IRAM" not in nano
    assert input_power_mw([TEGRASTATS_ORIN, TEGRASTATS_ORIN.replace("VDD_IN 5000", "VDD_IN 6000")]) == (
        [5000.0, 6000.0],
        "VDD_IN",
    )
    assert input_power_mw([TEGRASTATS_NANO]) == ([2516.0], "POM_5V_IN")
    assert "no total-input rail" in str(input_power_mw(["VDD_SOC 1400mW/1400mW"]))
    assert "no power rails" in str(input_power_mw(["RAM 2180/7764MB"]))


def test_tegrastats_meter_with_a_stand_in(tmp_path: Path) -> None:
    script = tmp_path / "tegrastats"
    script.write_text(f"#!/bin/sh\nwhile true; do echo '{TEGRASTATS_ORIN}'; sleep 0.02; done\n")
    script.chmod(0o755)
    meter = TegrastatsMeter(command=[str(script)])
    meter.start()
    time.sleep(0.3)
    reading = meter.stop()
    assert reading.mj is not None and reading.mj == pytest.approx(5000.0 * 0.3, rel=0.3)
    assert "VDD_IN" in (reading.method or "")
    missing = TegrastatsMeter(command=[str(tmp_path / "absent")])
    missing.start()
    assert missing.stop().reason.startswith("cannot start")


def test_thermal_zones(tmp_path: Path) -> None:
    assert "no thermal zones" in str(read_thermal_zones(tmp_path))
    zone = tmp_path / "thermal_zone0"
    zone.mkdir()
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("48250\n")
    assert read_thermal_zones(tmp_path) == {"thermal_zone0:cpu-thermal": 48.25}


def test_bench_cli_json(tmp_path):
    import json
    import subprocess
    import sys

    from edgepack import api

    bundle = api.export("demo:digits", ["host-ort"], out=tmp_path, recipe_chain=["fp32"]).bundle
    proc = subprocess.run([sys.executable, "-m", "edgepack.cli", "bench", str(bundle), "--seconds", "0.3",
                           "--iterations", "30", "--json", "--raw"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(proc.stdout)["result"]
    assert result["target"] == "host-ort" and result["p50"] > 0 and len(result["latencies_ms"]) >= 30
    bad = subprocess.run([sys.executable, "-m", "edgepack.cli", "bench", str(bundle), "--runner", "ssh://root@host;rm"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("edgepack: error:") and "Traceback" not in bad.stderr


def test_export_bench_host_puts_the_summary_in_the_manifest(tmp_path: Path) -> None:
    result = api.export("demo:digits", ["host-ort", "jetson-orin"], out=tmp_path, recipe_chain=["fp32"], bench="host",
                        bench_config=CONFIG)
    host = result.manifest["targets"]["host-ort"]["bench"]
    assert host["measured"] is True and host["runner"] == "host" and "latencies_ms" not in host
    assert 0 < host["min"] <= host["p50"] <= host["p99"] and host["iterations"] >= CONFIG.min_iters
    assert host["ci95_p50"][0] <= host["p50"] <= host["ci95_p50"][1]
    jetson = result.manifest["targets"]["jetson-orin"]["bench"]
    assert jetson["measured"] is False and jetson["reason"].startswith("not runnable here")
    assert read_manifest(result.bundle)["targets"]["host-ort"]["bench"]["p50"] == host["p50"]
    assert api.verify(result.bundle).files_checked > 0
    # the model card's absolute latency is this bench's p50, never the gate's interleaved wall time
    card = (result.bundle / "MODEL_CARD.md").read_text()
    assert f"p50 {host['p50']:.4f} ms, p95 {host['p95']:.4f} ms (host, {host['clock']} clock)" in card
    assert "not measured (not runnable here" in card


def test_export_bench_with_a_bad_runner_fails_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown scheme"):
        api.export("demo:digits", ["host-ort"], out=tmp_path / "out", bench="usb://phone")
    assert not (tmp_path / "out").exists()
