"""Where each layer's weights lie in an ncnn ``.bin`` file, and how tagged weight arrays are stored.

Byte ranges come from ncnn's own loaders: every layer of the loaded ``.param`` reads its weights through a
:class:`ncnn.DataReader` that counts the bytes, so any layer type ncnn knows is measured exactly."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from edgepack.errors import ExportError

FP16_TAG = 0x01306B47
INT8_TAG = 0x000D4B38
FP32_TAG = 0


def _capsule_pointer(capsule: object) -> int:
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype = ctypes.c_char_p
    api.PyCapsule_GetName.argtypes = [ctypes.py_object]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return int(api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule)))


def layer_ranges(param: Path, data: bytes) -> list[tuple[int, int]]:
    """``(start, end)`` byte offsets of each layer's weights in ``data`` (the ``.bin``), in ``.param`` order."""
    import ncnn

    class CountingReader(ncnn.DataReader):
        def __init__(self) -> None:
            super().__init__()
            self.position = 0
            self.short = False

        def scan(self, fmt: str, p: object) -> int:  # pragma: no cover - binary param only
            return 0

        def read(self, buf: object, size: int) -> int:
            chunk = data[self.position : self.position + size]
            self.short = self.short or len(chunk) < size
            ctypes.memmove(_capsule_pointer(buf), chunk, len(chunk))
            self.position += len(chunk)
            return len(chunk)

    net = ncnn.Net()
    if net.load_param(str(param)) != 0:
        raise ExportError(f"ncnn cannot load {param}")
    reader = CountingReader()
    ranges = []
    for layer in net.layers():
        start = reader.position
        if layer.load_model(ncnn.ModelBinFromDataReader(reader)) != 0 or reader.short:
            raise ExportError(f"ncnn cannot read the weights of layer {layer.name} ({layer.type}) from the .bin")
        ranges.append((start, reader.position))
    if reader.position != len(data):
        raise ExportError(f"ncnn read {reader.position} of {len(data)} bytes of the .bin: param and bin disagree")
    return ranges


def read_tagged(data: bytes, offset: int, count: int) -> tuple[np.ndarray, int]:
    """A weight array stored with a 4-byte type tag (ncnn ``ModelBin::load(w, 0)``): ``(float32 values, bytes)``."""
    tag = int(np.frombuffer(data, np.uint32, 1, offset)[0])
    if tag == FP16_TAG:
        size = (count * 2 + 3) // 4 * 4
        return np.frombuffer(data, np.float16, count, offset + 4).astype(np.float32), 4 + size
    if tag in (FP32_TAG, 0x0002C056):
        return np.frombuffer(data, np.float32, count, offset + 4).copy(), 4 + count * 4
    raise ExportError(f"weights at byte {offset} of the .bin are already quantized (tag {tag:#x})")


def read_raw(data: bytes, offset: int, count: int) -> np.ndarray:
    """An untagged float32 array (ncnn ``ModelBin::load(w, 1)``)."""
    return np.frombuffer(data, np.float32, count, offset).copy()


def int8_tagged(values: np.ndarray) -> bytes:
    """int8 weights as ncnn stores them: the int8 tag, the bytes, zero padding to 4-byte alignment."""
    raw = np.ascontiguousarray(values, dtype=np.int8).tobytes()
    return np.uint32(INT8_TAG).tobytes() + raw + b"\0" * (-len(raw) % 4)
