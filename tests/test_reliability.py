"""Faults around an export: concurrent exports, SIGTERM, a crashing toolchain, a full disk, the export
cache, deterministic artifacts and zip bundles. Real processes, real signals, a real tmpfs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from edgepack import api
from edgepack.bundle.lock import BundleLock
from edgepack.errors import OutputError

CLI = [sys.executable, "-m", "edgepack.cli"]


def _files(bundle: Path) -> dict[str, str]:
    return json.loads((bundle / "manifest.json").read_text())["files"]


# ----------------------------------------------------------------------------------------------- lock


def test_second_export_to_the_same_bundle_is_refused_while_one_runs(tmp_path):
    destination = tmp_path / "out" / "digits-cnn.edgepack"
    destination.parent.mkdir()
    with BundleLock(destination):
        with pytest.raises(OutputError, match="another export is writing this bundle"):
            api.export("demo:digits", ["host-ort"], out=tmp_path / "out")
        # A second lock from another process is refused the same way (flock is per open file).
        probe = subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path; from edgepack.bundle.lock import BundleLock\n"
             f"with BundleLock(Path({str(destination)!r})): pass"], capture_output=True, text=True)
        assert probe.returncode != 0 and "another export is writing" in probe.stderr
    assert not any(destination.parent.iterdir()), "the lock file is removed on release"


def test_a_stale_lock_file_from_a_killed_export_does_not_block(tmp_path):
    destination = tmp_path / "x.edgepack"
    (tmp_path / ".x.edgepack.lock").write_text("999999\n")  # left behind, but nobody holds the flock
    with BundleLock(destination):
        pass
    assert not (tmp_path / ".x.edgepack.lock").exists()


def test_concurrent_cli_exports_never_interleave(tmp_path):
    """Two real exports race for one --out: one wins, the other exits 2 naming the lock (or runs after)."""
    out = tmp_path / "out"
    env = {**os.environ, "EDGEPACK_CACHE": "off"}
    args = [*CLI, "export", "demo:digits", "-t", "host-ort", "--out", str(out), "--recipe", "fp32"]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lock = out / ".digits-cnn.edgepack.lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run(args, capture_output=True, text=True, env=env)
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    if lock.exists() or second.returncode == 2:
        assert second.returncode == 2 and "another export is writing" in second.stderr, second.stderr
    bundle = out / "digits-cnn.edgepack"
    assert api.verify(bundle).files_checked > 0
    assert sorted(p.name for p in out.iterdir()) == ["digits-cnn.edgepack"], "no staging dirs or lock left"


# ------------------------------------------------------------------------------------- signals / crash


def _processes_under(folder: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if Path(proc.cwd()).is_relative_to(folder):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def _temp_dirs(scratch: Path) -> list[Path]:
    """Temp directories (ours and the converters'); onnxruntime's import leaves a ``.ses`` file, not a dir."""
    return [p for p in scratch.iterdir() if p.is_dir() or p.name.startswith("edgepack")]


def test_sigterm_mid_export_keeps_the_previous_bundle_and_leaves_nothing_behind(tmp_path):
    out, scratch = tmp_path / "out", tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "EDGEPACK_CACHE": "off", "TMPDIR": str(scratch), "PYTHONUNBUFFERED": "1"}
    previous = subprocess.run([*CLI, "export", "demo:digits", "-t", "host-ort", "--recipe", "fp32", "--out", str(out)],
                              capture_output=True, text=True, env=env)
    assert previous.returncode == 0, previous.stderr
    bundle = out / "digits-cnn.edgepack"
    before = _files(bundle)
    proc = subprocess.Popen(
        [*CLI, "export", "demo:digits", "-t", "x86-openvino", "-t", "android-pixel8", "-t", "host-ort", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    deadline = time.monotonic() + 120  # wait until the export is under way (its scratch dir exists)
    while not _temp_dirs(scratch) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(4)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("export finished before SIGTERM arrived (machine too fast for this timing)")
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.strip().splitlines()[-1] == "edgepack: terminated" and "Traceback" not in stderr
    assert _files(bundle) == before and api.verify(bundle)
    assert sorted(p.name for p in out.iterdir()) == ["digits-cnn.edgepack"], list(out.iterdir())
    assert not _temp_dirs(scratch), _temp_dirs(scratch)
    time.sleep(0.5)
    assert not _processes_under(tmp_path), "a converter worker outlived the export"


def test_a_crashing_toolchain_fails_only_its_target(tmp_path, monkeypatch):
    """The TFLite converter worker dies of SIGSEGV (a real crash, injected through sitecustomize)."""
    crash = tmp_path / "crash"
    crash.mkdir()
    (crash / "sitecustomize.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(crash), os.environ.get("PYTHONPATH", "")]))
    result = api.export("demo:digits", ["android-pixel8", "host-ort"], out=tmp_path / "out", recipe_chain=["fp32"])
    targets = result.manifest["targets"]
    assert targets["host-ort"]["status"] == "ok"
    assert targets["android-pixel8"]["status"] == "failed"
    assert "SIGSEGV" in targets["android-pixel8"]["error"]
    assert result.manifest["status"] == "partial" and api.verify(result.bundle)


# ------------------------------------------------------------------------------------------ disk full


@pytest.fixture()
def tiny_disk(mount_tmpfs):
    return mount_tmpfs("disk", "256k")


def test_disk_full_while_writing_is_one_clean_error_and_keeps_the_disk_clean(tiny_disk):
    filler = tiny_disk / "other-data.bin"
    with filler.open("wb") as handle:  # leave ~8 KiB: the manifest fits, the artifacts do not
        handle.write(b"\0" * (256 - 8) * 1024)
    proc = subprocess.run([*CLI, "export", "demo:digits", "-t", "host-ort", "--recipe", "fp32", "--out", str(tiny_disk)],
                          capture_output=True, text=True, env={**os.environ, "EDGEPACK_CACHE": "off"})
    assert proc.returncode == 3, proc.stderr  # the environment failed (exit-code table in edgepack/errors.py)
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("edgepack:")]
    assert len(lines) == 1 and "no space left" in lines[0] and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["other-data.bin"], list(tiny_disk.iterdir())


# ----------------------------------------------------------------------------------------------- cache


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPACK_CACHE", "on")
    monkeypatch.setenv("EDGEPACK_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_identical_reexport_is_a_byte_identical_cache_hit(tmp_path, cache_dir, tiny_cnn_file, calib_npz):
    source = f"{tiny_cnn_file}:build"
    first = api.export(source, ["host-ort", "x86-openvino"], calib=calib_npz, out=tmp_path / "a")
    assert first.ok and first.cached == []
    second = api.export(source, ["host-ort", "x86-openvino"], calib=calib_npz, out=tmp_path / "b")
    assert second.cached == ["host-ort", "x86-openvino"] and second.results == []
    for relative in ["manifest.json", *_files(first.bundle)]:
        assert (first.bundle / relative).read_bytes() == (second.bundle / relative).read_bytes(), relative


def test_any_change_misses_the_cache(tmp_path, cache_dir, tiny_cnn_file, calib_npz):
    source = f"{tiny_cnn_file}:build"
    base = api.export(source, ["host-ort"], calib=calib_npz, out=tmp_path / "a", recipe_chain=["fp32"])
    assert base.cached == []
    assert api.export(source, ["host-ort"], calib=calib_npz, out=tmp_path / "a", recipe_chain=["fp32"]).cached == ["host-ort"]
    changes = {
        "gate setting": dict(max_drop=0.02),
        "recipe": dict(recipe_chain=["fp16"]),
        "calibration data": dict(calib=None),
    }
    for what, change in changes.items():
        kwargs = dict(calib=calib_npz, out=tmp_path / "a", recipe_chain=["fp32"]) | change
        assert api.export(source, ["host-ort"], **kwargs).cached == [], what
    # Same weights, different forward code: the factory file's hash is part of the key.
    tiny_cnn_file.write_text(tiny_cnn_file.read_text().replace("torch.nn.ReLU()", "torch.nn.ReLU6()"))
    assert api.export(source, ["host-ort"], calib=calib_npz, out=tmp_path / "a", recipe_chain=["fp32"]).cached == []


def test_no_cache_flag_and_unusable_cache_still_export(tmp_path, cache_dir, tiny_cnn_file, monkeypatch):
    source = f"{tiny_cnn_file}:build"
    api.export(source, ["host-ort"], out=tmp_path / "a", recipe_chain=["fp32"])
    assert api.export(source, ["host-ort"], out=tmp_path / "a", recipe_chain=["fp32"], cache=False).cached == []
    blocker = tmp_path / "a-file"
    blocker.write_text("the cache cannot be created under a file")
    monkeypatch.setenv("EDGEPACK_CACHE_DIR", str(blocker / "cache"))
    result = api.export(source, ["host-ort"], out=tmp_path / "b", recipe_chain=["fp32"])
    assert result.ok and result.cached == []


# ------------------------------------------------------------------------------ determinism and archive


def test_exporting_twice_gives_identical_artifacts(tmp_path):
    """No cache: every artifact byte-identical across two runs (recipe fixed so the latency gate's
    measurements on a shared machine cannot pick a different winner)."""
    targets = ["host-ort", "x86-openvino", "android-pixel8"]
    runs = [api.export("demo:digits", targets, out=tmp_path / str(i), recipe_chain=["int8"], max_slowdown=1.0, cache=False)
            for i in range(2)]
    first, second = (_files(r.bundle) for r in runs)
    artifacts = sorted(k for k in first if k.startswith("artifacts/"))
    assert len(artifacts) >= 4
    assert {k: first[k] for k in artifacts} == {k: second[k] for k in artifacts}


def test_zip_bundle_verifies_and_is_deterministic(tmp_path, cache_dir):
    zips = [api.export("demo:digits", ["host-ort"], out=tmp_path / str(i), archive=True, recipe_chain=["fp32"]).bundle
            for i in range(2)]
    assert zips[0].name == "digits-cnn.edgepack.zip" and zips[0].is_file()
    assert sorted(p.name for p in zips[0].parent.iterdir()) == ["digits-cnn.edgepack.zip"]
    assert api.verify(zips[0]).files_checked >= 2
    assert zips[0].read_bytes() == zips[1].read_bytes()  # second run is a cache hit: same bytes, same zip
    verify = subprocess.run([*CLI, "verify", str(zips[0])], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
