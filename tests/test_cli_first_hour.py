"""Issue 18, "The first hour": what a new user sees at an 80-column terminal, in CI logs and with --json."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli_lines import message_lines

from edgepack.cli import _gate_text, _print_export_summary, app

CLI = [sys.executable, "-m", "edgepack.cli"]


def run(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """The CLI as CI runs it: 80 columns, stderr a pipe (not a TTY), no export cache."""
    full = {**os.environ, "COLUMNS": "80", "EDGEPACK_CACHE": "off", **(env or {})}
    full.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=full, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One small export (host-ort exports fp32; the Edge TPU refuses it), shared by the tests below."""
    out = tmp_path_factory.mktemp("first-hour")
    proc = run("export", "demo:digits", "-t", "HOST-ORT,coral-edgetpu", "--recipe", "fp32", "-o", str(out))
    return out, proc


# --- 1. 80 columns: nothing cut ---------------------------------------------------------------------------

def test_targets_list_at_80_columns_shows_every_id_whole(registry):
    proc = run("targets", "list")
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    assert all(len(line) <= 80 for line in proc.stdout.splitlines())
    for target_id in registry.ids():
        assert re.search(rf"(^|\s){re.escape(target_id)}(\s|$)", proc.stdout, re.M), target_id


def test_export_at_80_columns_keeps_ids_and_the_whole_reason(exported):
    out, proc = exported
    assert proc.returncode == 1, proc.stderr
    assert "…" not in proc.stdout
    flat = " ".join(proc.stdout.split())
    assert "coral-edgetpu" in proc.stdout.split() and "host-ort" in proc.stdout.split()
    # the failure's reason arrives whole, fix included
    assert "full-integer models only: an int8 recipe with int8/uint8 I/O (int8-full)" in flat


def test_bench_at_80_columns_keeps_ids_and_cis(exported):
    out, _ = exported
    proc = run("bench", str(out / "digits-cnn.edgepack"), "-t", "host-ort", "--iterations", "20", "--seconds", "0.2")
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    assert "host-ort" in proc.stdout.split()
    assert re.search(r"\d+\.\d{3} \(\d+\.\d{3}-\d+\.\d{3}\)", proc.stdout), proc.stdout  # p50 with its CI


# --- 2. progress ------------------------------------------------------------------------------------------

def test_non_tty_progress_prints_timestamped_stage_lines_and_per_target_outcome(exported):
    _, proc = exported
    lines = proc.stderr.splitlines()
    assert any(re.fullmatch(r"\d\d:\d\d:\d\d \[1/2\] host-ort: exporting fp32", line) for line in lines), proc.stderr
    assert any(re.match(r"host-ort: ok, fp32 .*\d+\.\d s", line) for line in lines), proc.stderr
    assert any(line.startswith("coral-edgetpu: failed") for line in lines), proc.stderr
    assert any(line.strip().startswith("fp32 skipped: ") and "full-integer" in line for line in lines), proc.stderr


def test_progress_holds_back_the_loading_line_when_the_input_is_bad(tmp_path):
    proc = run("export", "demo:digits", "-t", "host-ort", "--calib", str(tmp_path / "missing.npz"), "-o", str(tmp_path))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# --- 3. toolchain noise -----------------------------------------------------------------------------------

def test_toolchain_noise_is_filtered_but_edgepack_warnings_stay(monkeypatch, capsys):
    import logging
    import warnings

    from edgepack import cli

    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli._quiet_toolchains()
        warnings.warn("Torch version 9.9 has not been tested with coremltools. You may run into errors.")
        warnings.warn_explicit("sklearn says hi", UserWarning, "x.py", 1, module="sklearn.base")
        warnings.warn("an unrelated warning")
    assert [str(w.message) for w in caught] == ["an unrelated warning"]
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    assert "TF_ENABLE_ONEDNN_OPTS" not in os.environ
    assert not logging.getLogger("coremltools").isEnabledFor(logging.WARNING)
    logger = logging.getLogger("edgepack")
    handlers = list(logger.handlers)
    from edgepack.cli_support import warnings_to_stderr

    with warnings_to_stderr():
        assert logger.isEnabledFor(logging.WARNING)
        logging.getLogger("edgepack.export_cache").warning("cache entry damaged; evicted")
    assert "edgepack: warning: cache entry damaged; evicted" in capsys.readouterr().err
    assert logger.handlers == handlers  # one command's handler never outlives it


def test_native_start_up_lines_are_dropped_and_everything_else_reaches_stderr(capfd):
    from edgepack._native_stderr import filtered_native_stderr

    noise = (b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
             b"I0000 00:00:1796484514.272659   15824 port.cc:153] oneDNN custom operations are on. ...\n")
    with filtered_native_stderr() as dropped:
        os.write(2, noise + b"E0000 00:00:1.0 1 op.cc:9] a real native error\n")
        os.write(2, b"partial line without newline")
        print("python-level line", file=sys.stderr)
    err = capfd.readouterr().err
    assert "oneDNN" not in err and "InitializeLog" not in err and len(dropped) == 2
    assert "a real native error" in err and "partial line without newline" in err and "python-level line" in err
    with filtered_native_stderr(verbose=True) as dropped:  # edgepack -v: nothing is hidden
        os.write(2, noise)
    assert "oneDNN custom operations" in capfd.readouterr().err and dropped == []


def test_a_core_ml_export_prints_no_tensorflow_start_up_lines(tmp_path):
    """coremltools imports TensorFlow in the edgepack process; its C++ INFO lines used to reach the terminal."""
    proc = run("export", "demo:digits", "-t", "iphone-15-pro", "--recipe", "fp32", "-o", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "I0000" not in proc.stderr and "InitializeLog" not in proc.stderr, proc.stderr
    assert "iphone-15-pro: ok, fp32" in proc.stderr


def test_cli_sets_tf_log_level_before_any_command():
    proc = subprocess.run([sys.executable, "-c", "import os, sys; sys.argv = ['edgepack', 'targets', 'list', '--json'];"
                           "from edgepack import cli\ntry:\n    cli.main()\nexcept SystemExit: pass\n"
                           "print('LEVEL', os.environ.get('TF_CPP_MIN_LOG_LEVEL'), os.environ.get('TF_ENABLE_ONEDNN_OPTS'))"],
                          capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")})
    assert "LEVEL 2 None" in proc.stdout, proc.stderr


# --- 4. conventions ---------------------------------------------------------------------------------------

def test_version_and_short_help():
    runner = CliRunner()
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and re.fullmatch(r"edgepack \d+\.\d+\.\d+\S*\n", version.stdout)
    for argv in (["-h"], ["export", "-h"], ["targets", "list", "-h"], ["farm", "run", "-h"]):
        done = runner.invoke(app, argv)
        assert done.exit_code == 0 and "Usage" in done.stdout, argv


def test_help_shows_no_python_types():
    done = CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "200"})
    assert done.exit_code == 0
    for python_type in ("<list[str]>", "<bool>", "<str>", "<list[Path]>", "<path>", "<float>"):
        assert python_type not in done.stdout, python_type
    assert "-o" in done.stdout and "ID[,ID...]" in done.stdout


def test_case_insensitive_ids_and_did_you_mean(registry):
    assert registry.get("HOST-ORT").id == "host-ort"
    done = CliRunner().invoke(app, ["targets", "show", "Jetson-Orin", "--json"])
    assert done.exit_code == 0 and json.loads(done.stdout)["result"]["id"] == "jetson-orin"
    bad = run("targets", "show", "HOST-OR")
    assert bad.returncode == 2 and "did you mean host-ort?" in bad.stderr


def test_comma_separated_targets_and_short_out(exported):
    out, proc = exported
    assert (out / "digits-cnn.edgepack").is_dir(), proc.stderr  # written with -o
    manifest = json.loads((out / "digits-cnn.edgepack" / "manifest.json").read_text())
    assert set(manifest["targets"]) == {"host-ort", "coral-edgetpu"}  # from "-t HOST-ORT,coral-edgetpu"


def test_bench_reports_throughput_and_raw_on_request(exported):
    out, _ = exported
    bundle = str(out / "digits-cnn.edgepack")
    proc = run("bench", bundle, "-t", "host-ort,Host-Ort", "--iterations", "20", "--seconds", "0.2", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["ok"] is True and data["command"] == "bench" and data["errors"] == []
    first = data["result"][0]
    assert first["target"] == "host-ort" and "latencies_ms" not in first
    assert first["throughput_ips"] == pytest.approx(1000 / first["p50"], rel=1e-3)
    raw = run("bench", bundle, "-t", "host-ort", "--iterations", "20", "--seconds", "0.2", "--json", "--raw")
    assert len(json.loads(raw.stdout)["result"][0]["latencies_ms"]) >= 20
    table = run("bench", bundle, "-t", "host-ort", "--iterations", "20", "--seconds", "0.2")
    assert "samples/s (batch 1)" in table.stdout and "samples/s = 1 x 1000 / p50 ms" in table.stdout
    # --batch N: every call carries N samples, and throughput counts samples
    batched = run("bench", bundle, "-t", "host-ort", "--iterations", "20", "--seconds", "0.2", "--batch", "8", "--json")
    assert batched.returncode == 0, batched.stderr
    result = json.loads(batched.stdout)["result"][0]
    assert result["config"]["batch"] == 8 and result["throughput_basis"].endswith("batch 8")
    assert result["throughput_ips"] == pytest.approx(8 * 1000 / result["p50"], rel=1e-3)


def test_bench_batch_is_refused_for_a_static_batch_and_for_device_tools(exported):
    from dataclasses import replace

    from edgepack.bundle.writer import read_manifest
    from edgepack.device_bench.bench import artifact_from_manifest, bench_inputs
    from edgepack.errors import InputError

    out, _ = exported
    bundle = out / "digits-cnn.edgepack"
    artifact = artifact_from_manifest(bundle, "host-ort")
    manifest = read_manifest(bundle)
    assert [s.shape for s in bench_inputs(manifest, artifact, 4)] == [(4, 1, 8, 8)]
    static = replace(artifact, inputs=tuple(s.with_static_shape(1) for s in artifact.inputs))
    with pytest.raises(InputError, match="--batch 4: input 'image' has a static shape 1x1x8x8"):
        bench_inputs(manifest, static, 4)
    proc = run("bench", str(bundle), "--runner", "adb://emulator-5554", "--batch", "4")
    assert proc.returncode == 2 and "the adb runner feeds each artifact its own input shapes" in proc.stderr


# --- 5. one --json envelope -------------------------------------------------------------------------------

def test_export_json_envelope(tmp_path):
    proc = run("export", "demo:digits", "-t", "host-ort,coral-edgetpu", "--recipe", "fp32", "-o", str(tmp_path), "--json")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert set(data) == {"ok", "command", "result", "errors"}
    assert data["ok"] is False and data["command"] == "export"
    assert {"bundle", "ok", "published", "cached", "manifest"} <= set(data["result"])
    assert [e["target"] for e in data["errors"]] == ["coral-edgetpu"]


@pytest.mark.parametrize("argv, command, code", [
    (["targets", "show", "nope-target", "--json"], "targets show", 2),
    (["verify", "/nonexistent/x.edgepack", "--json"], "verify", 2),
    (["export", "demo:digits", "-t", "nope-target", "--json"], "export", 2),
    (["bench", "/nonexistent/x.edgepack", "--json"], "bench", 2),
    (["package", "/nonexistent/x.edgepack", "-p", "python", "-o", "/nonexistent/o", "--json"], "package", 2),
])
def test_json_errors_are_json_on_stdout_with_the_same_exit_code(argv, command, code, tmp_path):
    done = CliRunner().invoke(app, argv)
    assert done.exit_code == code, done.output
    data = json.loads(done.stdout)
    assert data["ok"] is False and data["command"] == command and data["result"] is None
    assert data["errors"][0]["exit_code"] == code and data["errors"][0]["message"]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgepack: error: ")


def test_targets_list_json_envelope(registry):
    data = json.loads(CliRunner().invoke(app, ["targets", "list", "--json"]).stdout)
    assert data["ok"] is True and data["command"] == "targets list" and data["errors"] == []
    assert {row["id"] for row in data["result"]} == set(registry.ids())


# --- 6. the gate's interval and note ---------------------------------------------------------------------

def test_gate_text_with_and_without_interval():
    gate = {"kind": "accuracy", "metric": "top1", "value": 0.9944, "baseline": 0.9972, "drop": 0.0028}
    assert _gate_text(gate) == "0.9944 (artifact) vs 0.9972 (fp32), drop 0.3 pt"
    full = _gate_text({**gate, "drop_ci95": [0.001, 0.008], "samples": 2000, "note": "few samples"})
    assert full == "0.9944 (artifact) vs 0.9972 (fp32), drop 0.3 pt [95% CI 0.1-0.8], n=2000 · few samples"


def test_export_summary_prints_interval_and_note(capsys, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setenv("COLUMNS", "80")
    entry = {"status": "ok", "recipe": "int8", "runnable_here": "yes", "error": None, "placement": None,
             "artifact": {"precision": "int8", "bytes": 1000}, "parity": None,
             "gate": {"kind": "accuracy", "value": 0.9944, "baseline": 0.9972, "drop": 0.0028,
                      "drop_ci95": [0.001, 0.008], "samples": 2000, "note": "interval from a bootstrap"}}
    _print_export_summary(SimpleNamespace(bundle=Path("b.edgepack"), published=True, cached=[],
                                          manifest={"targets": {"host-ort": entry}}))
    flat = " ".join(capsys.readouterr().out.split())
    assert "0.9944 (artifact) vs 0.9972 (fp32), drop 0.3 pt [95% CI 0.1-0.8]" in flat
    assert "interval from a bootstrap" in flat


# --- 15. targets check says what it judged -----------------------------------------------------------------

def test_targets_check_says_it_judges_the_fp32_graph_not_what_ships():
    proc = run("targets", "check", "demo:digits", "-t", "jetson-orin")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "ops of the fp32 graph checked" in text and "the export summary's placement column judges what ships" in text


# --- 14. the bundle's Python snippet runs and prints what it computed --------------------------------------

def test_the_python_snippet_in_a_bundle_runs_and_prints_its_outputs(exported):
    out, proc = exported
    snippet = out / "digits-cnn.edgepack" / "snippets" / "python" / "run.py"
    done = subprocess.run([sys.executable, str(snippet)], capture_output=True, text=True, timeout=300, cwd="/")
    assert done.returncode == 0, done.stderr
    assert re.search(r"^\S+: float32 \[1, 10\]$", done.stdout, re.M), done.stdout


def test_a_core_ml_weight_coding_recipe_is_refused_for_a_runtime_that_stores_plain_weights(tmp_path):
    """Issue 18, item 15: `--recipe palettize-6bit -t host-ort` was accepted and shipped clustered fp32 weights."""
    from edgepack.compress.recipe import load_recipes
    from edgepack.exporters.registry import get_exporter

    proc = run("export", "demo:digits", "--recipe", "palettize-6bit", "-t", "host-ort", "-o", str(tmp_path))
    assert proc.returncode == 2 and not any(tmp_path.iterdir())
    assert message_lines(proc.stderr) == [
        "edgepack: error: --recipe palettize-6bit cannot run on host-ort: recipe 'palettize-6bit' stores weights as "
        "look-up tables (palettization), which onnxruntime artifacts store as plain values: accuracy lost, no bytes "
        "saved ('edgepack targets show host-ort' lists the recipes it runs)"]
    recipe = load_recipes().get("palettize-6bit")
    assert get_exporter("coreml").refusal(recipe) is None  # Core ML stores the look-up tables
    assert get_exporter("openvino").refusal(recipe) is not None
