"""Generated Python runner and the deployment contract: labels/preprocessing read from the artifact's own
metadata, labelled top-k from the command line, and the load-time runtime-version check."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgepack import api
from edgepack.package.build import package_bundle

TARGETS = ["host-ort", "x86-openvino", "android-pixel8"]
RUNNER = "digits_cnn_runner.py"


@pytest.fixture(scope="module")
def packaged(tmp_path_factory, one_torch_thread) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("contract")
    bundle = api.export("demo:digits", ["host-ort", "x86-openvino", "android-pixel8"], out=root / "bundle",
                        recipe_chain=["fp32"], cache=False).bundle
    result = package_bundle(bundle, "python", root / "py")
    assert result.targets == TARGETS
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.save(root / "digit.npy", digits.images[-1].reshape(1, 8, 8).astype(np.float32))  # raw 0..16, one sample
    return root / "py", root / "digit.npy"


def _run(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, RUNNER, *args], cwd=folder, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def _lines(done: subprocess.CompletedProcess) -> list[str]:
    """Output lines, without LiteRT's own INFO line about the XNNPACK delegate."""
    return [line for line in (done.stdout + done.stderr).splitlines() if line.strip() and not line.startswith("INFO:")]


def _artifact_labels(folder: Path, target: str) -> list[str]:
    """The labels in the packaged artifact's own metadata, read with the runtime's API."""
    suffix = {"host-ort": ".onnx", "x86-openvino": ".xml", "android-pixel8": ".tflite"}[target]
    model = folder / "models" / target / f"model{suffix}"
    if target == "host-ort":
        import onnxruntime as ort

        meta = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
        return json.loads(meta["edgepack.labels"])
    if target == "x86-openvino":
        import openvino as ov

        return json.loads(ov.Core().read_model(str(model)).get_rt_info(["edgepack", "labels"]).astype(str))
    import zipfile

    with zipfile.ZipFile(model) as archive:
        return archive.read("labels.txt").decode().splitlines()


@pytest.mark.parametrize("target", TARGETS)
def test_runner_prints_labelled_topk_from_the_artifact(packaged, target):
    folder, image = packaged
    labels = _artifact_labels(folder, target)
    assert len(labels) == 10
    done = _run(folder, str(image), "--target", target, "--top-k", "3", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["target"] == target and result["output"] == "logits"
    (row,) = result["topk"]
    assert len(row) == 3 and all(entry["label"] in labels for entry in row)
    assert row[0]["label"] == labels[8]  # load_digits().target[-1] == 8
    assert [e["score"] for e in row] == sorted((e["score"] for e in row), reverse=True)
    text = _run(folder, str(image), "--target", target, "--top-k", "2")
    assert text.returncode == 0 and re.fullmatch(rf"0: {labels[8]} \(\S+\), \S+ \(\S+\)", _lines(text)[0])


def test_labels_and_preprocessing_come_from_the_artifact_metadata(packaged, tmp_path):
    """Rewrite the ONNX model's contract (labels renamed, preprocessing marked baked): the runner follows the
    artifact, not the values generated into it; without a contract it falls back to the generated values."""
    import shutil

    import onnx

    folder, image = packaged
    copy = tmp_path / "py"
    shutil.copytree(folder, copy)
    path = copy / "models/host-ort/model.onnx"
    model = onnx.load(str(path))
    props = {p.key: p for p in model.metadata_props}
    contract = json.loads(props["edgepack.contract"].value)
    contract["labels"] = [f"digit-{i}" for i in range(10)]
    props["edgepack.contract"].value = json.dumps(contract)
    onnx.save(model, str(path))
    done = _run(copy, str(image), "--target", "host-ort", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["topk"][0][0]["label"] == "digit-8"

    sys.path.insert(0, str(copy))
    try:
        import importlib

        module = importlib.import_module("digits_cnn_runner")
        raw = np.load(image)[np.newaxis]
        runner = module.DigitsCnnRunner("host-ort")
        assert runner.labels == contract["labels"] and runner.class_output == "logits"
        assert runner.preprocessing["image"]["scale"] == 0.0625
        expected = runner.run({"image": raw})["logits"]
        # A contract that records the preprocessing as baked into the model: the runner passes raw data through.
        contract["inputs"][0]["preprocess"] = dict(contract["inputs"][0]["preprocess"], baked=True)
        props["edgepack.contract"].value = json.dumps(contract)
        onnx.save(model, str(path))
        baked = module.DigitsCnnRunner("host-ort")
        np.testing.assert_array_equal(baked.run({"image": raw * np.float32(0.0625)})["logits"], expected)
        # No contract (a bundle from before edgepack wrote one): the generated labels/preprocessing.
        del model.metadata_props[:]
        onnx.save(model, str(path))
        old = module.DigitsCnnRunner("host-ort")
        assert old.contract is None and old.labels == module.LABELS
        np.testing.assert_array_equal(old.run({"image": raw})["logits"], expected)
        assert old.topk(old.run({"image": raw}), 1)[0][0][0] == module.LABELS[8]
    finally:
        sys.path.remove(str(copy))
        sys.modules.pop("digits_cnn_runner", None)


@pytest.mark.parametrize("target", TARGETS)
def test_runner_refuses_a_runtime_version_mismatch_with_one_line(packaged, tmp_path, target):
    import shutil

    folder, image = packaged
    copy = tmp_path / "py"
    shutil.copytree(folder, copy)
    runner = copy / RUNNER
    text = runner.read_text()
    pinned = re.search(rf"'{target}': \{{.*?'runtime_version': '([^']+)'", text, re.S).group(1)
    major = int(pinned.split(".")[0])
    faked = f"{major + 1}.0.0"
    text = re.sub(rf"('{target}': \{{.*?'runtime_version': )'[^']+'", rf"\g<1>'{faked}'", text, count=1, flags=re.S)
    runner.write_text(text)
    done = _run(copy, str(image), "--target", target)
    lines = _lines(done)
    assert done.returncode != 0
    assert len(lines) == 1, lines
    assert "Traceback" not in done.stderr
    assert faked in lines[0] and pinned in lines[0], lines[0]
    assert "EDGEPACK_ALLOW_RUNTIME_MISMATCH" in lines[0]
    overridden = _run(copy, str(image), "--target", target, env={"EDGEPACK_ALLOW_RUNTIME_MISMATCH": "1"})
    assert overridden.returncode == 0 and _lines(overridden)[0].startswith("0: ")
