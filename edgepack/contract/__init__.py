"""The deployment contract written into each artifact's own container (ONNX metadata_props, TFLite
metadata, Core ML userDefined metadata, OpenVINO rt_info), so an app team can read what goes in and comes
out of the model without edgepack's manifest. See :mod:`edgepack.contract.metadata`; each runtime's writer and
reader live in its exporter package (``edgepack/exporters/<runtime>/contract.py``)."""

from edgepack.contract.metadata import CONTRACT_SCHEMA, Contract, TensorContract

__all__ = ["CONTRACT_SCHEMA", "Contract", "TensorContract"]
