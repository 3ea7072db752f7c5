"""Calibration and evaluation data: arrays keyed by model input name, optional labels."""

from edgepack.data.dataset import Dataset, load_dataset

__all__ = ["Dataset", "load_dataset"]
