"""Integrity under faults: no corrupt artifact ships, no good bundle is lost, nothing is left behind.

Faults are injected as a hostile operator would: cache files truncated and bit-flipped, a full temp disk
(a real tmpfs), SIGKILL/SIGINT/SIGTERM at named points of the publish (``EDGEPACK_FAULT``), a user's folder at
the output path, stale leftovers of killed runs, tampered and re-pointed manifests.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgepack import api
from edgepack._fs import exchange, recover_retired, swap_into_place
from edgepack.bundle.verify import artifact_digest
from edgepack.errors import EnvironmentFailure, OutputError, TamperedError, environment_errno
from tests.cli_lines import message_lines

CLI = [sys.executable, "-m", "edgepack.cli"]
NAME = "digits-cnn.edgepack"
DEAD_PID = 2 ** 22 + 7  # above the default pid_max: never a live process


def _files(bundle: Path) -> dict[str, str]:
    return json.loads((bundle / "manifest.json").read_text())["files"]


def _run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd)


def _one_warning_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in message_lines(proc.stderr) if line.startswith("edgepack: warning:")]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    return lines[0]


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = message_lines(proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPACK_CACHE", "on")
    monkeypatch.setenv("EDGEPACK_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _cached_artifact(cache: Path, target: str = "host-ort") -> Path:
    found = sorted(cache.glob(f"targets/*/files/artifacts/{target}/model.onnx"))
    assert len(found) == 1, found
    return found[0]


def _flip(path: Path, start: int, count: int) -> None:
    data = bytearray(path.read_bytes())
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------------ export cache


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "delete", "extra file", "edited entry"])
def test_a_damaged_cache_entry_is_evicted_reexported_and_repaired(tmp_path, cache_dir, damage, caplog):
    first = api.export("demo:digits", ["host-ort"], out=tmp_path / "a", recipe_chain=["fp32"])
    good = first.manifest["targets"]["host-ort"]["artifact"]["sha256"]
    artifact = _cached_artifact(cache_dir)
    entry = artifact.parents[3] / "entry.json"
    if damage == "truncate":
        artifact.write_bytes(artifact.read_bytes()[: artifact.stat().st_size // 2])
    elif damage == "bitflip":
        _flip(artifact, 5000, 4000)
    elif damage == "delete":
        artifact.unlink()
    elif damage == "extra file":
        (artifact.parent / "injected.onnx").write_bytes(b"not ours")
    else:
        document = json.loads(entry.read_text())
        document["gate"]["value"] = 1.0
        entry.write_text(json.dumps(document))
    with caplog.at_level(logging.WARNING, logger="edgepack"):
        second = api.export("demo:digits", ["host-ort"], out=tmp_path / "b", recipe_chain=["fp32"])
    assert second.cached == [] and second.ok
    assert any("damaged" in r.getMessage() and "evicted" in r.getMessage() for r in caplog.records), caplog.text
    shipped = second.bundle / "artifacts" / "host-ort" / "model.onnx"
    assert second.manifest["targets"]["host-ort"]["artifact"]["sha256"] == good
    assert api.verify(second.bundle) and shipped.read_bytes() == (first.bundle / "artifacts/host-ort/model.onnx").read_bytes()
    third = api.export("demo:digits", ["host-ort"], out=tmp_path / "c", recipe_chain=["fp32"])
    assert third.cached == ["host-ort"], "the damaged entry was not repaired"
    assert _cached_artifact(cache_dir).read_bytes() == shipped.read_bytes()


def test_cli_says_in_one_line_that_a_corrupt_cache_entry_was_evicted(tmp_path):
    env = {"EDGEPACK_CACHE": "on", "EDGEPACK_CACHE_DIR": str(tmp_path / "cache")}
    args = ["export", "demo:digits", "-t", "host-ort", "--recipe", "fp32", "--out", str(tmp_path / "out")]
    assert _run(*args, env=env).returncode == 0
    _flip(_cached_artifact(tmp_path / "cache"), 5000, 4000)
    proc = _run(*args, env=env)
    assert proc.returncode == 0, proc.stderr
    line = _one_warning_line(proc)
    assert line.startswith("edgepack: warning: export cache entry") and "sha256" in line
    assert "cached" not in proc.stdout + proc.stderr
    assert _run("verify", str(tmp_path / "out" / NAME), "--json").returncode == 0


# ----------------------------------------------------------------------------------------- full disk


@pytest.fixture()
def tiny_tmpfs(mount_tmpfs):
    return mount_tmpfs("tiny", "64k")


def test_a_full_temp_disk_keeps_the_previous_bundle_and_exits_3(tmp_path, tiny_tmpfs):
    out = tmp_path / "out"
    assert _run("export", "demo:digits", "-t", "host-ort", "--recipe", "fp32", "--out", str(out),
                env={"EDGEPACK_CACHE": "off"}).returncode == 0
    before = _files(out / NAME)
    proc = _run("export", "demo:digits", "-t", "host-ort", "-t", "x86-openvino", "--out", str(out),
                env={"EDGEPACK_CACHE": "off", "TMPDIR": str(tiny_tmpfs)})
    assert proc.returncode == 3, proc.stderr
    line = _one_error_line(proc)
    assert "no space left" in line and "nothing was replaced" in line, line
    assert _files(out / NAME) == before and api.verify(out / NAME)
    assert sorted(p.name for p in out.iterdir()) == [NAME]
    assert not [p for p in tiny_tmpfs.iterdir() if p.name.startswith("edgepack")], list(tiny_tmpfs.iterdir())


def test_an_environmental_failure_inside_a_converter_stops_the_export_instead_of_failing_a_recipe(tmp_path, monkeypatch):
    from edgepack.exporters.ort.exporter import OrtExporter

    first = api.export("demo:digits", ["host-ort"], out=tmp_path, recipe_chain=["fp32"], cache=False)
    before = _files(first.bundle)

    def full_disk(*args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/tmp/x/model.onnx")
        except OSError as exc:  # a toolchain that re-wraps the OSError, as onnx/TF do
            raise RuntimeError("failed to save the model") from exc

    monkeypatch.setattr(OrtExporter, "export", full_disk)
    with pytest.raises(EnvironmentFailure, match="no space left .* while exporting target 'host-ort'"):
        api.export("demo:digits", ["host-ort"], out=tmp_path, recipe_chain=["fp32"], cache=False)
    assert _files(first.bundle) == before


def test_a_run_where_every_target_failed_never_replaces_a_working_bundle(tmp_path, monkeypatch):
    from edgepack.exporters.ort.exporter import OrtExporter

    first = api.export("demo:digits", ["host-ort"], out=tmp_path, recipe_chain=["fp32"], cache=False)
    before = _files(first.bundle)

    def broken(*args, **kwargs):
        raise RuntimeError("converter bug")

    monkeypatch.setattr(OrtExporter, "export", broken)
    result = api.export("demo:digits", ["host-ort"], out=tmp_path, recipe_chain=["fp32"], cache=False)
    assert not result.published and not result.ok
    assert "converter bug" in result.manifest["targets"]["host-ort"]["error"]
    assert _files(first.bundle) == before and api.verify(first.bundle)


@pytest.mark.parametrize("code,expected", [
    (errno.ENOSPC, errno.ENOSPC), (errno.EIO, errno.EIO), (errno.EROFS, errno.EROFS), (errno.ENOENT, None)])
def test_environmental_errors_are_recognised_through_rewrapping(code, expected):
    try:
        try:
            raise OSError(code, os.strerror(code))
        except OSError as inner:
            raise ValueError("toolchain failed") from inner
    except ValueError as outer:
        assert environment_errno(outer) == expected
    worker = RuntimeError("onnx2tf worker failed: OSError: [Errno 28] No space left on device: '/tmp/a.tflite'")
    assert environment_errno(worker) == errno.ENOSPC
    assert environment_errno(RuntimeError("parity: max rel error 0.3 > 0.1")) is None


# ------------------------------------------------------------------------------------- signals at publish


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    """A cache holding both variants, so the faulted runs are fast cache hits that still publish."""
    cache = tmp_path_factory.mktemp("warm-cache")
    env = {"EDGEPACK_CACHE": "on", "EDGEPACK_CACHE_DIR": str(cache)}
    scratch = tmp_path_factory.mktemp("warm-out")
    variants = {}
    for variant, options in VARIANTS.items():
        proc = _run("export", "demo:digits", "-t", "host-ort", *options, "--out", str(scratch / variant), env=env)
        assert proc.returncode == 0, proc.stderr
        variants[variant] = _files(scratch / variant / NAME)
    assert variants["old"] != variants["new"]
    return env, variants


VARIANTS = {"old": ("--recipe", "fp32"), "new": ("--recipe", "fp32", "--max-drop", "0.05")}
"""Two different bundles of one model, both deterministic (fp32 is judged on parity, never on this host's
speed: a compressed variant could be refused by the latency gate on a busy machine)."""


FAULTS = [(point, sig) for point in ("bundle.staged", "swap.before", "swap.after") for sig in ("SIGKILL", "SIGINT", "SIGTERM")]


@pytest.mark.parametrize("exchange_available", [True, False], ids=["rename-exchange", "two-renames"])
@pytest.mark.parametrize("point,sig", FAULTS + [("swap.between", s) for s in ("SIGKILL", "SIGINT", "SIGTERM")])
def test_a_signal_at_any_publish_point_keeps_a_whole_bundle_and_the_next_run_cleans_up(
    tmp_path, warm_cache, point, sig, exchange_available
):
    if point == "swap.between" and exchange_available:
        pytest.skip("the atomic exchange has no 'between': one step")
    out, scratch = tmp_path / "out", tmp_path / "tmp"
    scratch.mkdir()
    cache_env, variants = warm_cache
    env = {**cache_env, "TMPDIR": str(scratch)}
    if not exchange_available:
        env["EDGEPACK_NO_RENAME_EXCHANGE"] = "1"
    args = ["export", "demo:digits", "-t", "host-ort", "--out", str(out)]
    assert _run(*args, *VARIANTS["old"], env=env).returncode == 0
    assert _files(out / NAME) == variants["old"]
    proc = _run(*args, *VARIANTS["new"], env={**env, "EDGEPACK_FAULT": f"{point}:{sig}"})
    number = getattr(signal, sig)
    assert proc.returncode in (-number, 128 + number), proc.stderr
    if sig != "SIGKILL":
        assert "Traceback" not in proc.stderr
    bundle = out / NAME
    if bundle.exists():  # never a mix, never a half: the old bundle or the new one, whole
        assert api.verify(bundle) and _files(bundle) in (variants["old"], variants["new"])
    if sig != "SIGKILL":  # the handlers unwind: the bundle is whole and nothing is left behind at once
        assert api.verify(bundle)
        assert sorted(p.name for p in out.iterdir()) == [NAME], list(out.iterdir())
    else:
        # A stranded old bundle is put back and every leftover removed by the next run, before it writes.
        recovered = _run(*args, "--recipe", "fp32", env=env)
        assert recovered.returncode == 0, recovered.stderr
        assert api.verify(bundle) and sorted(p.name for p in out.iterdir()) == [NAME], list(out.iterdir())
    leftovers = _run(*args, "--recipe", "fp32", env=env)
    assert leftovers.returncode == 0
    assert [p.name for p in scratch.iterdir() if p.name.startswith("edgepack")] == []
    cache = Path(cache_env["EDGEPACK_CACHE_DIR"]) / "targets"
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_sigkill_while_a_cache_entry_is_written_leaves_no_partial_entry_and_the_temp_is_swept(tmp_path):
    env = {"EDGEPACK_CACHE": "on", "EDGEPACK_CACHE_DIR": str(tmp_path / "cache")}
    args = ["export", "demo:digits", "-t", "host-ort", "--recipe", "fp32", "--out", str(tmp_path / "out")]
    proc = _run(*args, env={**env, "EDGEPACK_FAULT": "cache.staged:SIGKILL"})
    assert proc.returncode == -signal.SIGKILL
    targets = tmp_path / "cache" / "targets"
    assert [p.name for p in targets.iterdir() if not p.name.startswith(".")] == []  # no visible entry
    assert [p for p in targets.iterdir() if p.name.endswith(".tmp")], "the fault did not hit the staged entry"
    assert _run(*args, env=env).returncode == 0
    assert not [p for p in targets.iterdir() if p.name.endswith(".tmp")]
    assert len([p for p in targets.iterdir() if not p.name.startswith(".")]) == 1


def test_swap_rolls_back_on_any_exception_and_recovers_a_stranded_bundle(tmp_path, monkeypatch):
    destination, staging = tmp_path / "b.edgepack", tmp_path / ".b.edgepack.1.x.tmp"
    destination.mkdir()
    (destination / "old").write_text("old")
    staging.mkdir()
    (staging / "new").write_text("new")
    monkeypatch.setenv("EDGEPACK_FAULT", "swap.between:ENOSPC")
    monkeypatch.setattr("edgepack._fs.exchange", lambda a, b: False)
    with pytest.raises(OSError):
        swap_into_place(staging, destination)
    assert (destination / "old").read_text() == "old" and (staging / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [staging.name, destination.name]
    # What SIGKILL between the two renames leaves: the old bundle aside, the destination missing.
    stranded = tmp_path / f".b.edgepack.{DEAD_PID}.abcd.old"
    stranded.mkdir()
    os.rename(destination, stranded / "previous")
    assert recover_retired(destination) == destination
    assert (destination / "old").read_text() == "old" and not stranded.exists()


def test_rename_exchange_swaps_atomically_where_the_filesystem_has_it(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    if not exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) not available on this filesystem")
    assert (b / "x").read_text() == "a" and not (a / "x").exists()


# ------------------------------------------------------------------------------- only replace our own


def test_a_users_folder_at_the_output_path_is_never_replaced(tmp_path):
    folder = tmp_path / NAME
    folder.mkdir()
    (folder / "manifest.json").write_text('{"my": "notes"}')
    (folder / "thesis.tex").write_text("years of work")
    proc = _run("export", "demo:digits", "-t", "host-ort", "--recipe", "fp32", "--out", str(tmp_path),
                env={"EDGEPACK_CACHE": "off"})
    assert proc.returncode == 2, proc.stderr
    assert "refusing to replace it" in _one_error_line(proc)
    assert (folder / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "thesis.tex"]


def test_a_bundle_holding_a_users_extra_file_is_not_replaced(tmp_path):
    result = api.export("demo:digits", ["host-ort"], out=tmp_path, recipe_chain=["fp32"], cache=False)
    (result.bundle / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="refusing to replace it"):
        api.export("demo:digits", ["host-ort"], out=tmp_path, recipe_chain=["fp32"], cache=False)
    assert (result.bundle / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------------------ scratch and leftovers


def test_stale_leftovers_of_killed_runs_are_swept_and_live_ones_kept(tmp_path, cache_dir):
    out, scratch = tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    scratch.mkdir()
    stale = [scratch / f"edgepack-{DEAD_PID}.abcd", out / f".{NAME}.{DEAD_PID}.abcd.tmp",
             cache_dir / "targets" / f".{DEAD_PID}.abcd.tmp"]
    live = scratch / f"edgepack-{os.getpid()}.live"
    for path in [*stale, live]:
        path.mkdir(parents=True)
        (path / "junk").write_text("x")
    proc = _run("export", "demo:digits", "-t", "host-ort", "--recipe", "fp32", "--out", str(out),
                env={"TMPDIR": str(scratch), "EDGEPACK_CACHE": "on", "EDGEPACK_CACHE_DIR": str(cache_dir)})
    assert proc.returncode == 0, proc.stderr
    assert not any(p.exists() for p in stale), [p for p in stale if p.exists()]
    assert live.exists(), "another live process's scratch dir was removed"


def test_exporting_an_onnx_source_writes_nothing_into_the_current_directory(tmp_path):
    fp32 = api.export("demo:digits", ["host-ort"], out=tmp_path / "src", recipe_chain=["fp32"], cache=False)
    model = tmp_path / "digits.onnx"
    model.write_bytes((fp32.bundle / "artifacts/host-ort/model.onnx").read_bytes())
    work = tmp_path / "cwd"
    work.mkdir()
    proc = _run("export", str(model), "-t", "host-ort", "-t", "jetson-orin", "--recipe", "int8", "--out", str(tmp_path / "out"),
                env={"EDGEPACK_CACHE": "off"}, cwd=work)
    assert proc.returncode in (0, 1), proc.stderr
    assert list(work.iterdir()) == []


def test_quant_pre_process_scratch_files_land_in_the_workdir(tmp_path, monkeypatch):
    from edgepack.exporters.ort.quant import pre_process_in_workdir

    monkeypatch.chdir(tmp_path)
    workdir = tmp_path / "work"
    workdir.mkdir()

    def like_symbolic_shape_inference(src, dst):  # what onnxruntime does when inference is incomplete
        Path("sym_shape_infer_temp.onnx").write_bytes(b"x")
        Path(dst).write_bytes(Path(src).read_bytes())

    (tmp_path / "in.onnx").write_bytes(b"model")
    pre_process_in_workdir(like_symbolic_shape_inference, Path("in.onnx"), workdir / "pre.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "work"]
    assert (workdir / "sym_shape_infer_temp.onnx").exists() and (workdir / "pre.onnx").read_bytes() == b"model"


# -------------------------------------------------------------------------- signed and tampered bundles


@pytest.fixture(scope="module")
def signed_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("signed")
    keygen = _run("keygen", str(root / "key"))
    assert keygen.returncode == 0, keygen.stderr
    out = root / "out"
    proc = _run("export", "demo:digits", "-t", "host-ort", "--recipe", "fp32", "--out", str(out),
                "--sign-key", str(root / "key"), env={"EDGEPACK_CACHE": "off"})
    assert proc.returncode == 0, proc.stderr
    return out / NAME, root / "key.pub"


def _copy(bundle: Path, into: Path) -> Path:
    import shutil

    target = into / NAME
    shutil.copytree(bundle, target)
    return target


def _rewrite_manifest(bundle: Path, edit) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("verb", ["verify", "bench", "package", "diff"])
def test_every_verb_refuses_a_signed_bundle_whose_manifest_was_edited(tmp_path, signed_bundle, verb):
    bundle, pub = signed_bundle
    edited = _copy(bundle, tmp_path)
    _rewrite_manifest(edited, lambda m: m["data"].update(max_drop=0.5))
    commands = {
        "verify": ["verify", str(edited)],
        "bench": ["bench", str(edited), "--iterations", "3", "--seconds", "0.1"],
        "package": ["package", str(edited), "-p", "python", "-o", str(tmp_path / "pkg")],
        "diff": ["diff", str(bundle), str(edited)],
    }
    assert _run(*commands[verb], "--pub", str(pub)).returncode == 1
    proc = _run(*commands[verb], "--pub", str(pub))
    assert "signature does not match" in _one_error_line(proc)
    assert not (tmp_path / "pkg").exists()


@pytest.mark.parametrize("verb", ["verify", "bench", "package"])
def test_pub_refuses_an_unsigned_bundle(tmp_path, signed_bundle, verb):
    bundle, pub = signed_bundle
    unsigned = _copy(bundle, tmp_path)
    (unsigned / "manifest.sig").unlink()
    commands = {"verify": ["verify", str(unsigned)], "bench": ["bench", str(unsigned)],
                "package": ["package", str(unsigned), "-p", "python", "-o", str(tmp_path / "pkg")]}
    proc = _run(*commands[verb], "--pub", str(pub))
    assert proc.returncode == 1 and "not signed" in _one_error_line(proc)


def test_an_artifact_path_pointed_at_a_report_is_refused_by_verify_and_package(tmp_path, signed_bundle):
    bundle = _copy(signed_bundle[0], tmp_path)
    (bundle / "manifest.sig").unlink()

    def point_at_report(manifest):
        artifact = manifest["targets"]["host-ort"]["artifact"]
        artifact["path"] = "reports/host-ort/attempts.json"
        artifact["files"] = ["reports/host-ort/attempts.json"]
        artifact["sha256"] = manifest["files"]["reports/host-ort/attempts.json"]

    _rewrite_manifest(bundle, point_at_report)
    for command in (["verify", str(bundle)], ["package", str(bundle), "-p", "python", "-o", str(tmp_path / "pkg")]):
        proc = _run(*command)
        assert proc.returncode == 1, proc.stderr
        assert "is not under artifacts/host-ort/" in _one_error_line(proc)
    assert not (tmp_path / "pkg").exists()


def test_verify_cross_checks_the_artifact_hash_and_format(tmp_path, signed_bundle):
    bundle = _copy(signed_bundle[0], tmp_path)
    (bundle / "manifest.sig").unlink()
    _rewrite_manifest(bundle, lambda m: m["targets"]["host-ort"]["artifact"].update(sha256="0" * 64))
    with pytest.raises(TamperedError, match="artifact sha256 does not match"):
        api.verify(bundle)
    _rewrite_manifest(bundle, lambda m: m["targets"]["host-ort"]["artifact"].update(
        sha256=m["files"]["artifacts/host-ort/model.onnx"], format="tflite"))
    with pytest.raises(TamperedError, match="artifact format 'tflite' is not one the onnxruntime exporter writes"):
        api.verify(bundle)


def test_artifact_digest_of_a_directory_artifact_matches_the_core_ml_package_hash(tmp_path):
    from edgepack.exporters.coreml.exporter import package_sha256
    from edgepack.hashing import file_sha256

    package = tmp_path / "model.mlpackage"
    for relative in ("Manifest.json", "Data/com.apple.CoreML/model.mlmodel", "Data/com.apple.CoreML/weights/weight.bin",
                     "Data/com.apple.CoreML-x/a"):
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_text(relative)
    files = {f"artifacts/t/model.mlpackage/{p.relative_to(package).as_posix()}": file_sha256(p)
             for p in package.rglob("*") if p.is_file()}
    assert artifact_digest("artifacts/t/model.mlpackage", files) == package_sha256(package)


def test_tampered_zip_and_tampered_directory_exit_with_the_same_code(tmp_path, signed_bundle):
    bundle = _copy(signed_bundle[0], tmp_path)
    archive = tmp_path / f"{NAME}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(bundle.rglob("*")):
            if path.is_file():
                data = path.read_bytes()
                if path.name == "model.onnx":
                    data = data[:-10] + b"0123456789"
                zf.writestr(f"{NAME}/{path.relative_to(bundle).as_posix()}", data)
    _flip(bundle / "artifacts/host-ort/model.onnx", 100, 10)
    for target in (bundle, archive):
        proc = _run("verify", str(target))
        assert proc.returncode == 1 and "modified" in _one_error_line(proc), proc.stderr
    for missing in (tmp_path / "nope", tmp_path / "nope.zip"):
        proc = _run("verify", str(missing))
        assert proc.returncode == 2 and "not found" in _one_error_line(proc)


def test_verify_of_a_zip_with_a_full_tmpdir_is_one_line(tmp_path, tiny_tmpfs):
    proc = _run("export", "demo:digits", "-t", "host-ort", "--recipe", "fp32", "--archive", "--out", str(tmp_path),
                env={"EDGEPACK_CACHE": "off"})
    assert proc.returncode == 0, proc.stderr
    (tiny_tmpfs / "filler").write_bytes(b"\0" * (60 * 1024))
    proc = _run("verify", str(tmp_path / f"{NAME}.zip"), env={"TMPDIR": str(tiny_tmpfs)})
    assert proc.returncode == 3, proc.stderr
    assert "no space left" in _one_error_line(proc)


def test_bench_and_package_of_a_bundle_whose_artifact_cannot_load_is_one_line(tmp_path, signed_bundle):
    bundle = _copy(signed_bundle[0], tmp_path)
    (bundle / "manifest.sig").unlink()
    model = bundle / "artifacts/host-ort/model.onnx"
    model.write_bytes(b"this is not a protobuf")

    def rehash(manifest):
        from edgepack.hashing import file_sha256

        manifest["files"]["artifacts/host-ort/model.onnx"] = file_sha256(model)
        manifest["targets"]["host-ort"]["artifact"]["sha256"] = file_sha256(model)

    _rewrite_manifest(bundle, rehash)
    assert _run("verify", str(bundle)).returncode == 0  # consistent hashes: only running it can tell
    proc = _run("bench", str(bundle), "--iterations", "3", "--seconds", "0.1")
    assert proc.returncode == 1, proc.stderr
    assert "could not run model.onnx" in _one_error_line(proc)


def test_every_verb_reads_an_archived_bundle(tmp_path):
    proc = _run("export", "demo:digits", "-t", "host-ort", "--recipe", "fp32", "--archive", "--out", str(tmp_path),
                env={"EDGEPACK_CACHE": "off"})
    assert proc.returncode == 0, proc.stderr
    archive = str(tmp_path / f"{NAME}.zip")
    assert _run("bench", archive, "--iterations", "3", "--seconds", "0.1").returncode == 0
    stored = _run("bench", archive, "--iterations", "3", "--seconds", "0.1", "--db", f"sqlite:///{tmp_path}/b.sqlite")
    assert stored.returncode == 0, stored.stderr
    assert _run("package", archive, "-p", "python", "-o", str(tmp_path / "pkg")).returncode == 0
    assert (tmp_path / "pkg" / "edgepack-package.json").is_file()
    diff = _run("diff", archive, archive)
    assert diff.returncode == 0 and "no differences" in diff.stdout



@pytest.mark.parametrize("suffix", ["", "/sub"])
def test_out_pointing_at_a_file_is_one_line(tmp_path, suffix):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    proc = _run("export", "demo:digits", "-t", "host-ort", "--recipe", "fp32", "--out", f"{blocker}{suffix}",
                env={"EDGEPACK_CACHE": "off"})
    assert proc.returncode == 2 and "is a file, not a directory" in _one_error_line(proc)
    assert blocker.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_replacing_a_bundle_with_fewer_targets_says_which_are_dropped(tmp_path):
    env = {"EDGEPACK_CACHE": "on", "EDGEPACK_CACHE_DIR": str(tmp_path / "cache")}
    base = ["export", "demo:digits", "--recipe", "fp32", "--out", str(tmp_path / "out")]
    assert _run(*base, "-t", "host-ort", "-t", "x86-openvino", env=env).returncode == 0
    proc = _run(*base, "-t", "host-ort", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "drops target(s) x86-openvino" in _one_warning_line(proc)


def test_an_explicit_recipe_no_target_can_run_is_refused_before_any_work(tmp_path):
    proc = _run("export", "demo:digits", "-t", "coral-edgetpu", "--recipe", "fp32", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "--recipe fp32 cannot run on coral-edgetpu: the Edge TPU runs full-integer models only" in _one_error_line(proc)
    assert not (tmp_path / "out").exists()
