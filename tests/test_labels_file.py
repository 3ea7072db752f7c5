"""``--labels FILE`` (issue 17: "labels come from --labels FILE, or from the source"): the names reach each
artifact's metadata, read back with the runtime's own API; files that do not fit the model are one line."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import onnxruntime as ort
import pytest

from edgepack import api
from edgepack.errors import InputError
from edgepack.models.labels import read_labels

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def test_labels_from_a_file_replace_the_source_own_in_the_artifact_metadata(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(NAMES) + "\n\n")
    result = api.export("demo:digits", ["host-ort", "android-pixel8"], recipe_chain=["fp32"], out=tmp_path / "out",
                        labels=labels)
    assert result.ok and result.manifest["labels"] == NAMES
    onnx = result.bundle / result.manifest["targets"]["host-ort"]["artifact"]["path"]
    meta = ort.InferenceSession(str(onnx)).get_modelmeta().custom_metadata_map
    assert json.loads(meta["edgepack.labels"]) == NAMES
    tflite = result.bundle / result.manifest["targets"]["android-pixel8"]["artifact"]["path"]
    assert zipfile.ZipFile(tflite).read("labels.txt").decode().split() == NAMES


def test_json_label_files_list_and_id2label(tmp_path):
    listed, indexed = tmp_path / "a.json", tmp_path / "b.json"
    listed.write_text(json.dumps(NAMES))
    indexed.write_text(json.dumps({str(i): name for i, name in reversed(list(enumerate(NAMES)))}))
    assert read_labels(listed) == read_labels(indexed) == tuple(NAMES)


@pytest.mark.parametrize("content,message", [
    ("a\nb\nc\n", "3 labels, but no output of demo:digits has 3 classes (outputs: logits"),
    ("", "no labels in it"),
    ("a\n\nb\n", "label 2 is empty"),
])
def test_a_label_file_that_does_not_fit_is_refused_before_any_work(tmp_path, content, message):
    labels = tmp_path / "labels.txt"
    labels.write_text(content)
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        api.export("demo:digits", ["host-ort"], out=tmp_path / "out", labels=labels)
    assert not (tmp_path / "out").exists()


def test_cli_labels_option_one_line_on_a_missing_file(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgepack.cli", "export", "demo:digits", "-t", "host-ort",
                           "--labels", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("edgepack: error: --labels")
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
