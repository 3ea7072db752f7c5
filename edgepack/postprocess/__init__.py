"""Post-processing appended to a model's graph (``--postprocess nms``); see :mod:`edgepack.postprocess.apply`."""

from edgepack.postprocess.apply import POSTPROCESS_KEY, apply_postprocess, float_nodes, output_specs, postprocess_settings
from edgepack.postprocess.reference import detection_map, reference_nms
from edgepack.postprocess.settings import NmsSettings, head_layout, parse_postprocess

__all__ = [
    "POSTPROCESS_KEY",
    "NmsSettings",
    "apply_postprocess",
    "detection_map",
    "float_nodes",
    "head_layout",
    "output_specs",
    "parse_postprocess",
    "postprocess_settings",
    "reference_nms",
]
