"""RKNN-Toolkit2's own environment (``edgepack toolchains install rknn``).

rknn-toolkit2 2.5.0 pins ``numpy<=1.26.4``, ``onnx<=1.18`` and ``torch<=2.4`` (a CUDA build of several GB from
the index): it cannot share edgepack's environment. Its venv gets the toolkit without dependencies and the
pinned packages it imports; ``torch`` (imported by the toolkit's utilities at start-up, unused on the ONNX path)
is borrowed from edgepack's environment instead of downloaded again.
"""

from __future__ import annotations

from edgepack.exporters.base import IsolatedEnv

TOOLKIT = "rknn-toolkit2"
TOOLKIT_VERSION = "2.5.0"

RKNN_ENV = IsolatedEnv(
    name="rknn",
    requirements=(
        "numpy==1.26.4",
        "onnx==1.18.0",
        "onnxruntime==1.20.1",
        "protobuf==4.25.4",
        "opencv-python-headless==4.11.0.86",
        "scipy==1.17.1",
        "fast-histogram==0.14",
        "ruamel.yaml==0.19.1",
        "tqdm==4.70.1",
        "psutil==7.2.2",
    ),
    without_dependencies=(f"{TOOLKIT}=={TOOLKIT_VERSION}",),
    borrowed=("torch",),
    check="from rknn.api import RKNN",
)
