"""The source model as a :class:`Predictor`: the fp32 reference every artifact is compared with."""

from __future__ import annotations

from edgepack.exporters.base import Arrays, Predictor
from edgepack.models.source import ModelSource


class TorchPredictor(Predictor):
    """Runs the source torch module in eval mode without gradients."""

    def __init__(self, source: ModelSource) -> None:
        self.module = source.torch_module
        self.input_names = [s.name for s in source.inputs]
        self.output_names = [s.name for s in source.outputs]

    def __call__(self, inputs: Arrays) -> Arrays:
        import torch

        from edgepack.models.loaders import _flatten_outputs

        with torch.no_grad():
            result = self.module(*(torch.from_numpy(inputs[name]) for name in self.input_names))
        tensors = _flatten_outputs(result)
        return {name: tensor.numpy() for name, tensor in zip(self.output_names, tensors)}


def reference_predictor(source: ModelSource) -> Predictor:
    """The torch module when there is one, else the source ONNX file on ONNX Runtime."""
    if source.torch_module is not None:
        return TorchPredictor(source)
    from edgepack.exporters.ort.predictor import OrtPredictor

    assert source.onnx_path is not None  # a ModelSource always has one of the two
    return OrtPredictor(source.onnx_path)
