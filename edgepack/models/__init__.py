"""Model sources: ``torchvision:NAME``, ``timm:NAME``, ``file.py:factory``, ``.onnx``, ``.pt2``,
``hf:DIR`` and ``demo:digits`` -> :class:`ModelSource`."""

from edgepack.models.loaders import load_source
from edgepack.models.source import ModelSource, Preprocess, TensorSpec

__all__ = ["ModelSource", "Preprocess", "TensorSpec", "load_source"]
