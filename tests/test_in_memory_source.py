"""An in-memory ``torch.nn.Module`` through the Python API (issue 18: "the API takes no in-memory nn.Module")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgepack import api
from edgepack.errors import InputError
from edgepack.exporters.ort.predictor import OrtPredictor
from edgepack.device_bench.bench import artifact_from_manifest


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 5)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(image)).mean(dim=(2, 3)))


def test_an_in_memory_module_exports_and_its_artifact_computes_what_the_module_does(tmp_path):
    torch.manual_seed(0)
    module = TinyNet()
    result = api.export(module, ["host-ort"], inputs=["image:1x3x16x16"], recipe_chain=["fp32"], out=tmp_path,
                        cache=False)
    assert result.ok
    source = result.manifest["source"]
    assert source["uri"] == "module:TinyNet" and source["name"] == "tiny-net"
    sample = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    outputs = OrtPredictor(artifact_from_manifest(result.bundle, "host-ort").path)({"image": sample})
    (artifact_out,) = outputs.values() if isinstance(outputs, dict) else outputs
    with torch.no_grad():
        expected = module(torch.from_numpy(sample)).numpy()
    np.testing.assert_allclose(artifact_out, expected, rtol=1e-4, atol=1e-5)


def test_an_in_memory_module_without_inputs_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="needs its inputs"):
        api.export(TinyNet(), ["host-ort"], out=tmp_path)
    with pytest.raises(InputError, match="cannot export a dict"):
        api.export({"not": "a model"}, ["host-ort"], out=tmp_path)
    assert not any(tmp_path.iterdir())
