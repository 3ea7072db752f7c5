"""MNN: the contract as the model's ``bizCode`` (the ``Net`` table's first field, a string), as JSON.

MNNConvert writes ``--bizCode`` at conversion time; the contract is known only once the artifact is final,
so :func:`write_mnn_contract` rewrites that field of the finished FlatBuffer: the JSON is appended as a new
string at the end of the buffer and the field's offset is pointed at it (FlatBuffer offsets point forward,
so the rest of the file is untouched). Read back with
``MNN.nn.load_module_from_file(path, [], []).get_info()["bizCode"]``.
"""

from __future__ import annotations

import struct
from pathlib import Path

from edgepack.contract.metadata import Contract
from edgepack.errors import ExportError

_BIZCODE_FIELD = 0
"""Index of ``bizCode`` in MNN's ``table Net`` (schema/default/MNN.fbs)."""


def _field_position(buffer: bytes | bytearray, index: int) -> int | None:
    """Position of field ``index`` of the root table, or ``None`` when the field is absent."""
    root = struct.unpack_from("<I", buffer, 0)[0]
    vtable = root - struct.unpack_from("<i", buffer, root)[0]
    vtable_size = struct.unpack_from("<H", buffer, vtable)[0]
    slot = 4 + 2 * index
    if slot + 2 > vtable_size:
        return None
    offset = struct.unpack_from("<H", buffer, vtable + slot)[0]
    return root + offset if offset else None


def write_mnn_contract(path: Path, contract: Contract) -> None:
    """Store ``contract`` as the bizCode of the .mnn at ``path`` (in place)."""
    buffer = bytearray(path.read_bytes())
    position = _field_position(buffer, _BIZCODE_FIELD)
    if position is None:
        raise ExportError(f"{path.name}: the MNN model has no bizCode field to hold the deployment contract")
    data = contract.to_json().encode("utf-8")
    buffer += b"\0" * (-len(buffer) % 4)
    start = len(buffer)
    buffer += struct.pack("<I", len(data)) + data + b"\0"
    buffer += b"\0" * (-len(buffer) % 4)
    struct.pack_into("<I", buffer, position, start - position)
    tmp = path.with_name(path.name + ".contract-tmp")
    tmp.write_bytes(bytes(buffer))
    tmp.replace(path)


def read_bizcode(path: Path) -> str | None:
    """The bizCode string of the .mnn at ``path`` (``None`` when absent)."""
    buffer = path.read_bytes()
    position = _field_position(buffer, _BIZCODE_FIELD)
    if position is None:
        return None
    start = position + struct.unpack_from("<I", buffer, position)[0]
    length = struct.unpack_from("<I", buffer, start)[0]
    return buffer[start + 4 : start + 4 + length].decode("utf-8")


def read_mnn_contract(path: Path) -> Contract | None:
    """The contract in a .mnn's bizCode (``None`` when it holds none)."""
    text = read_bizcode(path)
    if not text or not text.lstrip().startswith("{"):
        return None
    return Contract.from_json(text)
