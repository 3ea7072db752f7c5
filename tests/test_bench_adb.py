"""adb runner: the transport's argument lists, delegate flags from the profiles, benchmark_model output
parsing, and the on-device harness run for real with ``sh`` against a sysfs-like folder and a local
executable that prints benchmark_model's log format.

The end-to-end tests drive :class:`AdbRunner` through a local ``adb`` shim that executes push/pull/shell on
this machine (``shell`` through ``sh -c``, exactly as adbd hands the joined command line to the phone's
shell), so quoting, the remote temp dir, the pull and the clean-up all run for real.
"""

from __future__ import annotations

import shlex
import stat
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgepack.device_bench.config import BenchConfig
from edgepack.device_bench.runners.adb import (
    HARNESS_DIR,
    PERCENTILES_REASON,
    AdbRunner,
    AdbTransport,
    BenchmarkModelReport,
    PhaseStats,
    benchmark_flags,
    delegate_for,
    parse_benchmark_output,
    parse_harness_output,
    quote_command,
)
from edgepack.device_bench.runners.base import RunnerError, runner_for_uri
from edgepack.errors import InputError, ProfileError, UnknownTargetError, UnsupportedError
from edgepack.exporters.base import Artifact
from edgepack.models.source import TensorSpec
from edgepack.targets.registry import load_registry

SCRIPT = HARNESS_DIR / "device" / "run_benchmark.sh"
SERIAL = "R5CT1234ABC"
IDLE_UA, LOAD_UA, VOLT_UV = 200_000, 800_000, 4_000_000
AVG_US = 2942.27

# benchmark_model's log lines (TFLite/LiteRT benchmark_model.cc: BenchmarkModel::Run, StatWithPercentiles,
# BenchmarkLoggingListener::OnBenchmarkEnd) as printed by a 2024+ build with --use_gpu=true.
REAL_LOG = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Graph: [/data/local/tmp/model.tflite]
INFO: Use gpu: [1]
INFO: Loaded model /data/local/tmp/model.tflite
INFO: Created TensorFlow Lite delegate for GPU.
INFO: GPU delegate created.
INFO: Explicitly applied GPU delegate, and the model graph will be partially executed by the delegate w/ 2 delegate kernels.
INFO: The input model file size (MB): 13.9193
INFO: Initialized session in 6.395ms.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=153 first=2761 curr=2885 min=2605 max=18080 avg=3243.58 std=2165 p5=2630 median=2761 p95=5331

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=337 first=2881 curr=2703 min=2605 max=20356 avg=2942.27 std=1190 p5=2647 median=2781 p95=3169

INFO: Inference timings in us: Init: 6395, First inference: 2761, Warmup (avg): 3243.58, Inference (avg): 2942.27
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=39.4531 overall=40.8281
INFO: Overall peak memory footprint (MB) via periodic monitoring: 45.5
"""


def _lines(text: str) -> list[tuple[float | None, str]]:
    return [(None, line) for line in text.splitlines()]


# --------------------------------------------------------------------------------------------------
# Transport and URI
# --------------------------------------------------------------------------------------------------


def test_transport_argument_lists_and_quoting() -> None:
    adb = AdbTransport(SERIAL, "/opt/platform-tools/adb")
    assert adb.push(Path("/a b/model.tflite"), "/data/local/tmp/x") == [
        "/opt/platform-tools/adb", "-s", SERIAL, "push", "/a b/model.tflite", "/data/local/tmp/x",
    ]  # fmt: skip
    assert adb.pull("/data/local/tmp/r.txt", Path("/out dir/r.txt"))[3:] == ["pull", "/data/local/tmp/r.txt", "/out dir/r.txt"]
    hostile = ["sh", "/data/local/tmp/run.sh", "--graph=a b;rm -rf /", "$(reboot)", "it's", ""]
    argv = adb.shell(hostile)
    assert argv[:4] == ["/opt/platform-tools/adb", "-s", SERIAL, "shell"] and len(argv) == 5
    assert shlex.split(argv[4]) == hostile  # one word per argument, nothing expanded by the phone's shell
    assert quote_command(["a", "b c"]) == "a 'b c'"


@pytest.mark.parametrize("serial", ["", "-s", "a b", "x;reboot", "$(id)", "emu\n"])
def test_transport_refuses_odd_serials(serial: str) -> None:
    with pytest.raises(InputError):
        AdbTransport(serial)


def test_uri_and_options() -> None:
    runner = runner_for_uri("adb://emulator-5554?idle_ms=0&sample_ms=20", benchmark_model="/data/local/tmp/bm")
    assert isinstance(runner, AdbRunner) and runner.uri == "adb://emulator-5554"
    assert (runner.idle_ms, runner.sample_ms, runner.benchmark_model) == (0, 20, "/data/local/tmp/bm")
    assert runner_for_uri("adb://192.168.1.20:5555").uri == "adb://192.168.1.20:5555"
    for bad in ("adb://", "adb://x?colour=red", "adb://x?sample_ms=0", "adb://x?remote_dir=relative",
                "adb://x?lib_dir=/data/../etc", "adb://x?benchmark_model=/a%20b"):  # fmt: skip
        with pytest.raises(InputError):
            runner_for_uri(bad)


# --------------------------------------------------------------------------------------------------
# Delegates come from the profile
# --------------------------------------------------------------------------------------------------


def test_every_android_accelerator_has_a_delegate() -> None:
    android = [p for p in load_registry() if p.family == "android" and p.runtime == "tflite"]
    assert {p.id for p in android} >= {"android-pixel8", "android-snapdragon-8gen3"}
    for profile in android:
        for name, acc in profile.accelerators.items():
            assert acc.litert_delegate is not None, f"{profile.id}: accelerator '{name}' has no benchmark_model delegate"


def test_delegate_flags_follow_the_profile() -> None:
    registry = load_registry()
    pixel8, sd8g3 = registry.get("android-pixel8"), registry.get("android-snapdragon-8gen3")
    assert delegate_for(pixel8, None, "/q")[2] == ("--use_xnnpack=true",)
    assert delegate_for(pixel8, "gpu", "/q")[2] == ("--use_gpu=true",)
    assert delegate_for(pixel8, "nnapi", "/q")[2] == ("--use_nnapi=true",)
    name, delegate, flags = delegate_for(sd8g3, "htp", "/data/local/tmp/qnn")
    assert name == "htp" and delegate.needs_lib_dir
    assert flags == (
        "--external_delegate_path=/data/local/tmp/qnn/libQnnTFLiteDelegate.so",
        "--external_delegate_options=backend_type:htp",
    )
    with pytest.raises(InputError, match="not one of android-pixel8's accelerators"):
        delegate_for(pixel8, "htp", "/q")  # Tensor G3 has no Hexagon
    with pytest.raises(InputError):
        delegate_for(sd8g3, "nnapi", "/q")
    assert not delegate_for(pixel8, "gpu", "/q")[1].needs_lib_dir


NEW_DEVICE = (Path(__file__).parent / "data" / "acme-phone.toml").read_text()
"""A device the code has never heard of (shared with the other accelerator-facts tests)."""


def _new_device(tmp_path: Path, text: str = NEW_DEVICE) -> Path:
    path = tmp_path / "acme-phone.toml"
    path.write_text(text)
    return path


def test_a_new_accelerator_is_one_toml(tmp_path: Path) -> None:
    registry = load_registry(extra=[_new_device(tmp_path)])
    profile = registry.get("acme-phone")
    name, delegate, flags = delegate_for(profile, "acmenpu", "/data/local/tmp/acme")
    assert name == "acmenpu" and delegate.reported_as == "EXTERNAL" and delegate.needs_lib_dir
    assert flags == ("--external_delegate_path=/data/local/tmp/acme/libAcmeNpuDelegate.so",
                     "--external_delegate_options=mode:fast")  # fmt: skip
    assert delegate_for(profile, "gpu", "/q")[2] == ("--use_gpu=true",)  # inherited through extends


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        (('reported_as = "EXTERNAL"', 'reported_as = "EXTERNAL"\nflavour = "x"'),
         ("accelerators.acmenpu.litert_delegate.flavour: unknown key",)),
        (("benchmark_flags = [", "benchmark_flag = ["),
         ("accelerators.acmenpu.litert_delegate.benchmark_flags: Field required", "and 1 more problem")),
        (("{lib_dir}/libAcme", "{libdir}/libAcme"),
         ("accelerators.acmenpu.litert_delegate.benchmark_flags:", "the only placeholder is {lib_dir}")),
        (('mode:fast"]', 'mode:fast", "rm -rf /"]'),
         ("accelerators.acmenpu.litert_delegate.benchmark_flags:", "'rm -rf /' is not one '--name=value'")),
        (("kotlin_create = 'AcmeNpuDelegate(", "kotlin_constructor = 'AcmeNpuDelegate("),
         ("accelerators.acmenpu.litert_delegate.kotlin_constructor: unknown key",)),
        (('"com.acme.npu:litert-acme-npu"', '"com.acme.npu:litert-acme-npu:1.0"'),
         ("accelerators.acmenpu.litert_delegate:", "is not 'group:name' (the version is LiteRT's)")),
        (('"com.acme.npu.AcmeNpuDelegate"', '"AcmeNpuDelegate; import x"'),
         ("accelerators.acmenpu.litert_delegate:", "is not a fully qualified Kotlin name")),
        (('reported_as = "EXTERNAL"', ""), ("accelerators.acmenpu.litert_delegate.reported_as: Field required",)),
        (('coreml_compute_units = "cpuAndNeuralEngine"', 'coreml_compute_units = "cpuAndNPU"'),
         ("accelerators.acmenpu.coreml_compute_units:", "'cpuAndNeuralEngine'")),
        (('kind = "npu"', 'kind = "npu"\ndelegate = "acme"'), ("accelerators.acmenpu.delegate: unknown key",)),
    ],
)
def test_unknown_or_bad_delegate_keys_are_refused(tmp_path: Path, patch: tuple[str, str], expected: tuple[str, ...]) -> None:
    assert patch[0] in NEW_DEVICE
    with pytest.raises(ProfileError) as info:
        load_registry(extra=[_new_device(tmp_path, NEW_DEVICE.replace(*patch))])
    assert "acme-phone.toml: " in str(info.value)
    for part in expected:
        assert part in str(info.value)


def test_kotlin_facts_need_kotlin_create(tmp_path: Path) -> None:
    text = NEW_DEVICE.replace("kotlin_create = 'AcmeNpuDelegate(AcmeNpuDelegate.Options().setMode(\"fast\"))'\n", "")
    assert text != NEW_DEVICE
    with pytest.raises(ProfileError, match="kotlin_imports and maven need kotlin_create"):
        load_registry(extra=[_new_device(tmp_path, text)])


def test_an_accelerator_without_delegate_facts_is_refused(tmp_path: Path) -> None:
    start = NEW_DEVICE.index("[accelerators.acmenpu.litert_delegate]")
    profile = load_registry(extra=[_new_device(tmp_path, NEW_DEVICE[:start])]).get("acme-phone")
    assert profile.accelerators["acmenpu"].litert_delegate is None
    with pytest.raises(UnsupportedError, match=r"names no benchmark_model delegate \(\[accelerators\.acmenpu\.litert_delegate\]\)"):
        delegate_for(profile, "acmenpu", "/q")


def test_benchmark_flags_from_config() -> None:
    flags = benchmark_flags("/d/m.tflite", BenchConfig(warmup=3, min_iters=50, min_seconds=1.5, threads=4), ["--use_gpu=true"])
    assert flags == [
        "--graph=/d/m.tflite", "--num_runs=50", "--min_secs=1.5", "--max_secs=600", "--warmup_runs=3",
        "--warmup_min_secs=0", "--report_peak_memory_footprint=true", "--num_threads=4", "--use_gpu=true",
    ]  # fmt: skip
    auto = benchmark_flags("/m", BenchConfig(), [])
    assert "--warmup_runs=1" in auto and "--warmup_min_secs=0.5" in auto and not any("num_threads" in f for f in auto)


# --------------------------------------------------------------------------------------------------
# benchmark_model output
# --------------------------------------------------------------------------------------------------


def test_parse_current_benchmark_model_output() -> None:
    report = parse_benchmark_output(_lines(REAL_LOG))
    assert report.warmup is not None and report.warmup.count == 153
    regular = report.regular
    assert (regular.count, regular.min, regular.max, regular.avg, regular.std) == (337, 2605, 20356, 2942.27, 1190)
    assert (regular.p5, regular.median, regular.p95) == (2647, 2781, 3169)
    assert (report.init_us, report.first_inference_us, report.inference_avg_us) == (6395, 2761, 2942.27)
    assert (report.mem_init_mb, report.mem_overall_mb, report.peak_mem_mb) == (39.4531, 40.8281, 45.5)
    [delegation] = report.delegations
    assert (delegation.delegate, delegation.coverage, delegation.kernels) == ("GPU", "partial", 2)


def test_parse_older_and_edge_formats() -> None:
    # TF 2.x before StatWithPercentiles: no p5/median/p95; a one-run warm-up prints "count=1 curr=X";
    # large values come in scientific notation; NNAPI that takes nothing says so.
    log = """\
INFO: Though NNAPI delegate is explicitly applied, the model graph will not be executed by the delegate.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=1 curr=1041765

INFO: Running benchmark for at least 10 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=10 first=2653894 curr=2709263 min=2640862 max=3025403 avg=2.71985e+06 std=105101
INFO: Inference timings in us: Init: 458883, First inference: 2732148, Warmup (avg): 2.73215e+06, Inference (avg): 2.71985e+06
"""
    report = parse_benchmark_output(_lines(log))
    assert report.warmup == PhaseStats(1, 1041765, 1041765, 1041765, 1041765, 1041765, 0.0, 1041765, 1041765, 1041765)
    assert report.regular.avg == pytest.approx(2.71985e6) and report.regular.median is None
    assert report.inference_avg_us == pytest.approx(2.71985e6) and report.peak_mem_mb is None
    assert report.delegations[0].coverage == "none"
    assert PhaseStats.parse("count=10 curr=5(all same)") == PhaseStats(10, 5, 5, 5, 5, 5, 0.0, 5, 5, 5)


def test_parse_refuses_output_without_a_timed_run() -> None:
    with pytest.raises(RunnerError, match="no timed-run statistics.*Failed to apply GPU delegate"):
        parse_benchmark_output(_lines("INFO: STARTING!\nERROR: Failed to apply GPU delegate.\n"))


def test_parse_refuses_foreign_or_truncated_result_files() -> None:
    with pytest.raises(RunnerError, match="does not start with"):
        parse_harness_output("hello\n")
    with pytest.raises(RunnerError, match="truncated"):
        parse_harness_output("edgepack-android-bench 1\nmeta idle_ms 0\n")


# --------------------------------------------------------------------------------------------------
# The on-device script, run for real with sh
# --------------------------------------------------------------------------------------------------


@dataclass
class FakePhone:
    root: Path
    sysfs: Path
    benchmark_model: Path
    args_file: Path

    @property
    def battery(self) -> Path:
        return self.sysfs / "class" / "power_supply" / "battery"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _executable(path: Path, text: str) -> Path:
    _write(path, text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _fake_phone(root: Path, *, status: str = "Discharging", exit_code: int = 0, battery: bool = True,
                delegation: str = "") -> FakePhone:  # fmt: skip
    """A sysfs-like folder and a benchmark_model stand-in that prints REAL_LOG's format, raises the
    battery current during its timed phase and warms a thermal zone."""
    sysfs = root / "sys"
    bat = sysfs / "class" / "power_supply" / "battery"
    if battery:
        _write(bat / "current_now", f"{IDLE_UA}\n")
        _write(bat / "voltage_now", f"{VOLT_UV}\n")
        _write(bat / "status", f"{status}\n")
        _write(bat / "type", "Battery\n")
    _write(sysfs / "class" / "power_supply" / "usb" / "type", "USB\n")
    _write(sysfs / "class" / "thermal" / "thermal_zone0" / "type", "cpu-1-0-usr\n")
    _write(sysfs / "class" / "thermal" / "thermal_zone0" / "temp", "35500\n")
    _write(sysfs / "class" / "thermal" / "thermal_zone7" / "type", "battery thermal\n")
    _write(sysfs / "class" / "thermal" / "thermal_zone7" / "temp", "29000\n")
    args_file = root / "bm-args.txt"
    current = shlex.quote(str(bat / "current_now"))
    body = f"""\
        #!/bin/sh
        printf '%s\\n' "$@" > {shlex.quote(str(args_file))}
        graph=""
        for a in "$@"; do case "$a" in --graph=*) graph=${{a#--graph=}} ;; esac; done
        [ -f "$graph" ] || {{ echo "ERROR: Could not open '$graph'."; exit 1; }}
        echo "INFO: STARTING!"
        echo "INFO: Loaded model $graph"
        {f'echo "INFO: {delegation}"' if delegation else ':'}
        echo "INFO: Initialized session in 6.395ms."
        echo "INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds."
        echo "INFO: count=153 first=2761 curr=2885 min=2605 max=18080 avg=3243.58 std=2165 p5=2630 median=2761 p95=5331"
        echo ""
        {f'echo {LOAD_UA} > {current}' if battery else ':'}
        echo 41000 > {shlex.quote(str(sysfs / "class" / "thermal" / "thermal_zone0" / "temp"))}
        echo "INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds."
        sleep 0.6
        echo "INFO: count=337 first=2881 curr=2703 min=2605 max=20356 avg={AVG_US} std=1190 p5=2647 median=2781 p95=3169"
        sleep 0.1
        {f'echo {IDLE_UA} > {current}' if battery else ':'}
        echo ""
        echo "INFO: Inference timings in us: Init: 6395, First inference: 2761, Warmup (avg): 3243.58, Inference (avg): {AVG_US}"
        echo "INFO: Memory footprint delta from the start of the tool (MB): init=39.4531 overall=40.8281"
        printf 'INFO: Overall peak memory footprint (MB) via periodic monitoring: 45.5'
        exit {exit_code}
        """
    bm = _executable(root / "bin" / "benchmark_model", textwrap.dedent(body))
    return FakePhone(root, sysfs, bm, args_file)


def _run_script(phone: FakePhone, *flags: str, idle_ms: int = 200, sample_ms: int = 20) -> tuple[int, str]:
    out = phone.root / "out" / "result.txt"
    out.parent.mkdir(exist_ok=True)
    done = subprocess.run(
        ["sh", str(SCRIPT), "--benchmark-model", str(phone.benchmark_model), "--out", str(out), "--sysfs",
         str(phone.sysfs), "--idle-ms", str(idle_ms), "--sample-ms", str(sample_ms), "--", *flags],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert not list(out.parent.glob("*.part*")), "temporary files left beside the result"
    return done.returncode, out.read_text() if out.exists() else done.stderr


def _report(text: str) -> tuple[object, BenchmarkModelReport]:
    run = parse_harness_output(text)
    return run, parse_benchmark_output(run.output)


def test_script_measures_energy_against_the_idle_baseline(tmp_path: Path) -> None:
    from edgepack.device_bench.runners.adb import battery_energy, thermal_summary

    phone = _fake_phone(tmp_path)
    model = tmp_path / "m o d.tflite"
    model.write_bytes(b"TFL3")
    code, text = _run_script(phone, f"--graph={model}", "--use_gpu=true")
    assert code == 0, text
    run, report = _report(text)
    assert run.exit_code == 0 and run.meta["battery"].endswith("power_supply/battery")
    assert phone.args_file.read_text().splitlines() == [f"--graph={model}", "--use_gpu=true"]
    assert len(run.power["idle"]) == 10 and all(mw == pytest.approx(IDLE_UA * VOLT_UV / 1e9) for _, mw in run.power["idle"])
    assert report.regular.count == 337 and report.regular_start is not None and report.regular_end is not None
    assert 0.5 <= report.regular_end - report.regular_start <= 1.5
    energy = battery_energy(run, report)  # type: ignore[arg-type]
    expected_mj = (LOAD_UA - IDLE_UA) * VOLT_UV / 1e9 * AVG_US / 1e6
    assert energy.mj == pytest.approx(expected_mj, rel=1e-6), energy
    assert "minus the idle baseline" in (energy.method or "")
    thermal, reason = thermal_summary(run)  # type: ignore[arg-type]
    assert reason is None and thermal is not None
    assert thermal["start_c"] == {"thermal_zone0:cpu-1-0-usr": 35.5, "thermal_zone7:battery thermal": 29.0}
    assert thermal["end_c"]["thermal_zone0:cpu-1-0-usr"] == 41.0 and thermal["max_end_c"] == 41.0


@pytest.mark.parametrize("status", ["Charging", "Full", "Not charging"])
def test_script_on_usb_power_gives_no_energy(tmp_path: Path, status: str) -> None:
    from edgepack.device_bench.runners.adb import battery_energy

    phone = _fake_phone(tmp_path, status=status)
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    code, text = _run_script(phone, f"--graph={model}", idle_ms=40)
    run, report = _report(text)
    energy = battery_energy(run, report)  # type: ignore[arg-type]
    assert code == 0 and energy.mj is None and status in (energy.reason or "") and "adb over Wi-Fi" in (energy.reason or "")


def test_script_without_battery_or_baseline(tmp_path: Path) -> None:
    from edgepack.device_bench.runners.adb import battery_energy

    phone = _fake_phone(tmp_path, battery=False)
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    code, text = _run_script(phone, f"--graph={model}")
    run, report = _report(text)
    assert code == 0 and run.meta["battery"] == "none" and not run.power["run"]
    assert "no battery" in (battery_energy(run, report).reason or "")  # type: ignore[arg-type]
    phone = _fake_phone(tmp_path / "b")
    code, text = _run_script(phone, f"--graph={model}", idle_ms=0)
    run, report = _report(text)
    assert "idle-baseline" in (battery_energy(run, report).reason or "")  # type: ignore[arg-type]


def test_script_records_a_failing_benchmark_model(tmp_path: Path) -> None:
    phone = _fake_phone(tmp_path)
    code, text = _run_script(phone, "--graph=/nonexistent.tflite", idle_ms=0)
    run = parse_harness_output(text)
    assert code == 0 and run.exit_code == 1
    assert run.output[-1][1] == "ERROR: Could not open '/nonexistent.tflite'."


def test_script_usage_errors(tmp_path: Path) -> None:
    phone = _fake_phone(tmp_path)
    base = ["sh", str(SCRIPT), "--benchmark-model", str(phone.benchmark_model)]
    cases = [
        (base, "--out is required"),
        (["sh", str(SCRIPT), "--benchmark-model", str(tmp_path / "nope"), "--out", str(tmp_path / "r")], "not an executable"),
        ([*base, "--out", str(tmp_path / "r"), "--idle-ms", "1.5"], "not a whole number"),
        ([*base, "--out", str(tmp_path / "r"), "--bogus"], "unknown option"),
        ([*base, "--out"], "needs a value"),
    ]
    for argv, message in cases:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert done.returncode == 64 and message in done.stderr, (argv, done.stderr)
    done = subprocess.run([*base, "--out", str(tmp_path / "no" / "such" / "dir" / "r")], capture_output=True, text=True)
    assert done.returncode == 65


# --------------------------------------------------------------------------------------------------
# AdbRunner end to end through a local adb shim
# --------------------------------------------------------------------------------------------------

ADB_SHIM = """\
#!{python}
# Local stand-in for adb: 'adb -s SERIAL push|pull|shell' executed on this machine.
import shutil, subprocess, sys
args = sys.argv[1:]
if args[:1] != ["-s"] or args[1] != {serial!r}:
    print(f"adb: device '{{args[1] if len(args) > 1 else ''}}' not found", file=sys.stderr)
    sys.exit(1)
command, rest = args[2], args[3:]
if command in ("push", "pull"):
    source, target = rest
    try:
        shutil.copyfile(source, target)
    except OSError as exc:
        print(f"adb: error: {{exc}}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)
if command == "shell":
    sys.exit(subprocess.run(["sh", "-c", " ".join(rest)]).returncode)
sys.exit(2)
"""


@pytest.fixture
def phone(tmp_path: Path) -> FakePhone:
    return _fake_phone(tmp_path, delegation="Explicitly applied GPU delegate, and the model graph will be partially "
                       "executed by the delegate w/ 3 delegate kernels.")  # fmt: skip


def _artifact(root: Path, target: str = "android-pixel8") -> Artifact:
    path = root / "artifacts" / target / "model.tflite"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"TFL3 not a real flatbuffer: the stand-in benchmark_model only opens it")
    spec = TensorSpec("input", (1, 8, 8, 1), "float32")
    return Artifact(target, "tflite", path, (path,), "tflite", "fp16", "fp16", (spec,), (spec,), {}, "onnx2tf")


def _runner(phone: FakePhone, serial: str = SERIAL, **options: str) -> AdbRunner:
    adb = _executable(phone.root / "platform-tools" / "adb", ADB_SHIM.format(python=sys.executable, serial=SERIAL))
    device_tmp = phone.root / "device-tmp"
    device_tmp.mkdir(exist_ok=True)
    defaults = {"adb": str(adb), "benchmark_model": str(phone.benchmark_model), "remote_dir": str(device_tmp),
                "sysfs": str(phone.sysfs), "idle_ms": "200", "sample_ms": "20"}  # fmt: skip
    runner = runner_for_uri(f"adb://{serial}", **{**defaults, **options})
    assert isinstance(runner, AdbRunner)
    return runner


def test_runner_end_to_end(phone: FakePhone) -> None:
    artifact = _artifact(phone.root)
    config = BenchConfig(warmup=5, min_iters=50, min_seconds=1.0, threads=2, accelerator="gpu")
    result = _runner(phone).run(artifact, config)
    args = phone.args_file.read_text().splitlines()
    assert args[0].startswith("--graph=") and args[0].endswith("/model.tflite")
    assert "--use_gpu=true" in args and "--num_threads=2" in args and "--warmup_runs=5" in args
    assert result.runner == f"adb://{SERIAL}" and result.target == "android-pixel8" and result.precision == "fp16"
    assert (result.p50, result.p95, result.min, result.max) == (2.781, 3.169, 2.605, 20.356)
    assert result.mean == pytest.approx(AVG_US / 1000) and result.std == pytest.approx(1.19)
    assert result.latencies_ms == () and result.p90 is None and result.p99 is None and result.ci95_p50 is None
    assert result.percentiles_reason == PERCENTILES_REASON and result.outliers is None
    assert result.warmup_discarded == 153 and result.cold_start_ms == pytest.approx((6395 + 2761) / 1000)
    assert result.peak_mem_mb == 45.5
    expected_mj = (LOAD_UA - IDLE_UA) * VOLT_UV / 1e9 * AVG_US / 1e6
    assert result.energy_mj_per_inference == pytest.approx(expected_mj, rel=1e-6)
    assert result.thermal is not None and result.thermal["max_end_c"] == 41.0
    assert result.sustained is None and "per-iteration" in (result.sustained_reason or "")
    assert result.env["accelerator"] == "gpu" and result.env["delegations"][0]["kernels"] == 3
    assert any("fell back to the CPU" in n for n in result.notes)
    removed = [n for n in result.notes if n.startswith("remote temp dir")]
    assert removed and removed[0].endswith("removed") and not list((phone.root / "device-tmp").iterdir())
    assert type(result).from_json(result.to_json()) == result


def test_runner_errors_clean_up(phone: FakePhone) -> None:
    artifact = _artifact(phone.root)
    with pytest.raises(RunnerError, match="device not connected"):
        _runner(phone, serial="SOMEONE-ELSE").run(artifact, BenchConfig(min_iters=5, min_seconds=0))
    failing = _fake_phone(phone.root / "failing", exit_code=3)
    with pytest.raises(RunnerError, match="benchmark_model exited with status 3"):
        _runner(failing).run(artifact, BenchConfig(min_iters=5, min_seconds=0))
    assert not list((failing.root / "device-tmp").iterdir()), "remote temp dir left behind after a failure"
    with pytest.raises(RunnerError, match="not an executable"):
        _runner(phone, benchmark_model="/data/local/tmp/missing").run(artifact, BenchConfig(min_iters=5, min_seconds=0))
    with pytest.raises(InputError, match="not one of"):
        _runner(phone).run(artifact, BenchConfig(accelerator="htp"))
    onnx = Artifact("host-ort", "onnxruntime", artifact.path, (artifact.path,), "onnx", "fp32", "fp32", (), (), {}, "")
    with pytest.raises(UnsupportedError, match=".tflite"):
        _runner(phone).run(onnx, BenchConfig())
    with pytest.raises(UnsupportedError, match="not found"):
        _runner(phone, adb=str(phone.root / "no-adb")).run(artifact, BenchConfig())


def test_runner_takes_a_new_accelerator_from_the_registry_it_is_given(tmp_path: Path) -> None:
    phone = _fake_phone(tmp_path, delegation="Explicitly applied EXTERNAL delegate, and the model graph will be "
                        "completely executed by the delegate.")  # fmt: skip
    registry = load_registry(extra=[_new_device(tmp_path)])
    adb = _executable(phone.root / "platform-tools" / "adb", ADB_SHIM.format(python=sys.executable, serial=SERIAL))
    (phone.root / "device-tmp").mkdir()
    runner = runner_for_uri(
        f"adb://{SERIAL}", registry=registry, adb=str(adb), benchmark_model=str(phone.benchmark_model),
        remote_dir=str(phone.root / "device-tmp"), sysfs=str(phone.sysfs), idle_ms="0", sample_ms="20",
        lib_dir="/data/local/tmp/acme",
    )  # fmt: skip
    assert isinstance(runner, AdbRunner) and runner.registry is registry
    result = runner.run(_artifact(phone.root, "acme-phone"), BenchConfig(min_iters=5, min_seconds=0, accelerator="acmenpu"))
    args = phone.args_file.read_text().splitlines()
    assert args[-2:] == ["--external_delegate_path=/data/local/tmp/acme/libAcmeNpuDelegate.so",
                         "--external_delegate_options=mode:fast"]  # fmt: skip
    assert result.env["accelerator"] == "acmenpu" and result.env["delegate_flags"] == args[-2:]
    assert not any("delegate" in n for n in result.notes), result.notes  # EXTERNAL reported as fully applied
    # The shipped registry (the default) does not know the device.
    with pytest.raises(UnknownTargetError):
        _runner(phone).run(_artifact(phone.root / "shipped", "acme-phone"), BenchConfig(accelerator="acmenpu"))


def test_runner_needs_a_registry() -> None:
    with pytest.raises(TypeError, match="needs the target registry"):
        AdbRunner.from_uri("adb://emulator-5554", {})
    assert AdbRunner.formats() == ("tflite",)
