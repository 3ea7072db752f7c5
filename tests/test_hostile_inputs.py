"""Hostile and broken inputs: each one gives one clear error line, exit 2, and nothing written.

Every case is a function ``(tmp_path) -> (argv, needles)`` in :data:`CASES`; docs/reliability.md's hostile-input line
states ``len(CASES)`` (tests/test_docs.py checks it). Cases run the real CLI in-process (typer's runner) with
a private temp dir, so a leaked staging or scratch directory is caught too.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgepack.cli import app

Case = Callable[[Path], tuple[list[str], tuple[str, ...]]]
PWNED = "PWNED"
"""File a successful injection or pickle payload would create (asserted absent after every case)."""


def _tiny_onnx(path: Path, *, op: str = "Relu", domain: str = "", external: str | None = None) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    if external is not None:
        weight.data_location = TensorProto.EXTERNAL
        weight.ClearField("raw_data")
        entry = weight.external_data.add()
        entry.key, entry.value = "location", external
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node(op, ["h"], ["y"], domain=domain)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], initializer=[weight],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def missing_model(tmp: Path):
    return ["export", str(tmp / "nope.onnx"), "-t", "host-ort"], ("nope.onnx", "not found")


def corrupt_onnx(tmp: Path):
    (tmp / "corrupt.onnx").write_bytes(b"this is not an onnx protobuf")
    return ["export", str(tmp / "corrupt.onnx"), "-t", "host-ort"], ("corrupt.onnx", "not a valid ONNX")


def truncated_onnx(tmp: Path):
    whole = _tiny_onnx(tmp / "whole.onnx").read_bytes()
    (tmp / "truncated.onnx").write_bytes(whole[: len(whole) // 2])
    return ["export", str(tmp / "truncated.onnx"), "-t", "host-ort"], ("truncated.onnx", "not a valid ONNX")


def onnx_external_data_outside_folder(tmp: Path):
    (tmp / "secret.bin").write_bytes(np.ones(16, np.float32).tobytes())
    (tmp / "models").mkdir()
    model = _tiny_onnx(tmp / "models" / "escape.onnx", external="../secret.bin")
    return ["export", str(model), "-t", "host-ort"], ("escape.onnx", "outside the model's folder")


def onnx_unknown_op(tmp: Path):
    model = _tiny_onnx(tmp / "custom.onnx", op="Frobnicate", domain="com.example.evil")
    return ["export", str(model), "-t", "host-ort"], ("custom.onnx", "Frobnicate")


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {PWNED}",))


def pickle_payload_weights(tmp: Path):
    factory = tmp / "tiny.py"
    factory.write_text("import torch\ndef build():\n    return torch.nn.Linear(4, 2)\n")
    evil = tmp / "evil.pt"
    evil.write_bytes(pickle.dumps({"weight": _Payload()}))
    return (["export", f"{factory}:build", "-t", "host-ort", "--input", "x:1x4", "--weights", str(evil)],
            ("evil.pt", "weights_only"))


def pickled_calibration(tmp: Path):
    buffer = io.BytesIO()
    np.savez(buffer, image=np.array([_Payload()], dtype=object))
    (tmp / "calib.npz").write_bytes(buffer.getvalue())
    return ["export", "demo:digits", "-t", "host-ort", "--calib", str(tmp / "calib.npz")], ("calib.npz", "cannot read")


def _calib(tmp: Path, array: np.ndarray) -> Path:
    np.savez(tmp / "calib.npz", image=array)
    return tmp / "calib.npz"


def nan_calibration(tmp: Path):
    data = np.zeros((8, 1, 8, 8), np.float32)
    data[3, 0, 2, 2] = np.nan
    return ["export", "demo:digits", "-t", "host-ort", "--calib", str(_calib(tmp, data))], ("calib.npz", "NaN")


def inf_calibration(tmp: Path):
    data = np.zeros((8, 1, 8, 8), np.float32)
    data[0, 0, 0, 0] = np.inf
    return ["export", "demo:digits", "-t", "host-ort", "--calib", str(_calib(tmp, data))], ("calib.npz", "inf")


def wrong_shape_calibration(tmp: Path):
    data = np.zeros((8, 3, 8, 8), np.float32)
    return ["export", "demo:digits", "-t", "host-ort", "--calib", str(_calib(tmp, data))], ("calib.npz", "image")


def empty_eval(tmp: Path):
    np.savez(tmp / "eval.npz", image=np.zeros((0, 1, 8, 8), np.float32), labels=np.zeros((0,), np.int64))
    return ["export", "demo:digits", "-t", "host-ort", "--eval", str(tmp / "eval.npz")], ("eval.npz",)


def labels_out_of_range(tmp: Path):
    np.savez(tmp / "eval.npz", image=np.zeros((4, 1, 8, 8), np.float32), labels=np.array([0, 1, 2, 10]))
    return ["export", "demo:digits", "-t", "host-ort", "--eval", str(tmp / "eval.npz")], ("eval.npz", "labels range 0..10", "0..9")


def negative_labels(tmp: Path):
    np.savez(tmp / "eval.npz", image=np.zeros((4, 1, 8, 8), np.float32), labels=np.array([0, -1, 2, 3]))
    return ["export", "demo:digits", "-t", "host-ort", "--eval", str(tmp / "eval.npz")], ("eval.npz", "labels range -1..3")


def profile_with_wrong_type(tmp: Path):
    (tmp / "my-board.toml").write_text('id = "my-board"\nextends = "linux-arm64-cpu"\nname = "My board"\nmemory_mb = "lots"\n')
    return (["export", "demo:digits", "-t", "my-board", "--profile", str(tmp / "my-board.toml")],
            ("my-board.toml", "memory_mb"))


def recipe_with_wrong_type(tmp: Path):
    (tmp / "mine.toml").write_text('name = "mine"\nprecision = "int8"\ncalibration = 42\n')
    return ["export", "demo:digits", "-t", "host-ort", "--recipe", str(tmp / "mine.toml")], ("mine.toml", "calibration")


def target_with_shell_metacharacters(tmp: Path):
    return ["export", "demo:digits", "-t", f"host-ort; touch {PWNED}"], ("unknown target", "host-ort")


def target_with_control_characters(tmp: Path):
    return ["export", "demo:digits", "-t", "host-ort\x1b[2J\nfake line"], ("unknown target",)


def runner_uri_injection(tmp: Path):
    bundle = tmp / "b.edgepack"
    return (["bench", str(bundle), "--runner", f"ssh://root@localhost;touch {PWNED}"], ("runner", "ssh://"))


def runner_uri_option_injection(tmp: Path):
    return (["bench", str(tmp / "b.edgepack"), "--runner", "ssh://user@localhost?identity=$(touch PWNED)"],
            ("identity",))


def runner_uri_proxycommand(tmp: Path):
    return (["bench", str(tmp / "b.edgepack"), "--runner", "ssh://-oProxyCommand=touch@localhost"], ("runner",))


def _zip(tmp: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    path = tmp / "bundle.edgepack.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return path


def zip_slip_bundle(tmp: Path):
    archive = _zip(tmp, [("x.edgepack/manifest.json", b"{}"), ("x.edgepack/../../" + PWNED, b"owned")])
    return ["verify", str(archive)], ("bundle.edgepack.zip", "escapes the bundle")


def zip_absolute_path_bundle(tmp: Path):
    archive = _zip(tmp, [("x.edgepack/manifest.json", b"{}"), (f"/tmp/{PWNED}", b"owned")])
    return ["verify", str(archive)], ("absolute path",)


def zip_symlink_bundle(tmp: Path):
    link = zipfile.ZipInfo("x.edgepack/artifacts/model.onnx")
    link.create_system = 3
    link.external_attr = (0o120777) << 16  # S_IFLNK
    archive = _zip(tmp, [("x.edgepack/manifest.json", b"{}"), (link, b"/etc/passwd")])
    return ["verify", str(archive)], ("symlink",)


def not_a_zip_bundle(tmp: Path):
    (tmp / "bundle.edgepack.zip").write_bytes(b"PK\x03\x04 but then nothing")
    return ["verify", str(tmp / "bundle.edgepack.zip")], ("not a readable zip",)


def truncated_calibration(tmp: Path):
    (tmp / "calib.npz").write_bytes(b"PK\x03\x04 truncated zip")
    return ["export", "demo:digits", "-t", "host-ort", "--calib", str(tmp / "calib.npz")], ("calib.npz", "cannot read")


def input_shape_the_model_rejects(tmp: Path):
    return (["export", "torchvision:resnet18", "--random-weights", "-t", "host-ort", "--input", "input:1x5x32x32"],
            ("rejects input", "--input"))


def eval_function_file_missing(tmp: Path):
    return ["export", "demo:digits", "-t", "host-ort", "--eval", f"{tmp / 'gone.py'}:score"], ("gone.py", "not found")


def eval_function_that_raises_on_import(tmp: Path):
    (tmp / "evil_eval.py").write_text("raise SystemError('import-time failure')\n")
    return (["export", "demo:digits", "-t", "host-ort", "--eval", f"{tmp / 'evil_eval.py'}:score"],
            ("evil_eval.py", "importing it failed", "import-time failure"))


def unknown_metric(tmp: Path):
    return ["export", "demo:digits", "-t", "host-ort", "--metric", "top0"], ("--metric top0", "unknown metric")


def bad_input_spec(tmp: Path):
    return ["export", "demo:digits", "-t", "host-ort", "--input", "image:1xfoo!"], ("--input",)


def max_drop_out_of_range(tmp: Path):
    return ["export", "demo:digits", "-t", "host-ort", "--max-drop", "5"], ("--max-drop",)


CASES: dict[str, Case] = {case.__name__: case for case in (
    missing_model, corrupt_onnx, truncated_onnx, onnx_external_data_outside_folder, onnx_unknown_op,
    pickle_payload_weights, pickled_calibration, nan_calibration, inf_calibration, wrong_shape_calibration,
    empty_eval, labels_out_of_range, negative_labels, profile_with_wrong_type, recipe_with_wrong_type,
    target_with_shell_metacharacters, target_with_control_characters, runner_uri_injection,
    runner_uri_option_injection, runner_uri_proxycommand, zip_slip_bundle, zip_absolute_path_bundle,
    zip_symlink_bundle, not_a_zip_bundle, bad_input_spec, max_drop_out_of_range, truncated_calibration,
    input_shape_the_model_rejects, eval_function_file_missing, eval_function_that_raises_on_import, unknown_metric,
)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_gives_one_clean_error_and_writes_nothing(name, tmp_path, monkeypatch):
    work = tmp_path / "work"
    scratch = tmp_path / "tmp"
    work.mkdir()
    scratch.mkdir()
    monkeypatch.chdir(work)  # a payload's relative `touch PWNED` would land here
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    argv, needles = CASES[name](tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out"
    if argv[0] == "export":
        argv = [*argv, "--out", str(out)]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgepack: error: "), result.stderr
    assert lines[0].isprintable(), "control characters from the input must not reach the terminal"
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out.exists(), "--out must not be created"
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "nothing new beside the inputs"
    assert not any(scratch.iterdir()), f"temp files left behind: {list(scratch.iterdir())}"
    assert not list(tmp_path.rglob(PWNED)) and not Path("/tmp", PWNED).exists(), "an injected command ran"
