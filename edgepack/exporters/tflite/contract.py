"""TFLite / LiteRT: the TFLite Model Metadata that Android's tooling (Task Library, MetadataExtractor,
Android Studio's ML model binding) reads, written the way tflite_support's ``MetadataPopulator`` does:

* a ``ModelMetadata`` flatbuffer (``metadata_schema.fbs``, file identifier ``M001``) in a model buffer named
  by the model's ``TFLITE_METADATA`` metadata entry: model name/description/version/author, per input
  ``ImageProperties`` (colour space, size) or ``FeatureProperties`` with ``NormalizationOptions``
  (``(pixel - mean) / std`` in raw pixel units), per output a description with the semantics, and the labels
  file as a ``TENSOR_AXIS_LABELS`` associated file of a class-logits output;
* the associated files (``labels.txt``, one label a line, and ``edgepack_contract.json``, the full
  :class:`~edgepack.contract.metadata.Contract`) packed into the model as an uncompressed zip appended after
  the flatbuffer (TFLite ignores trailing bytes; ``zipfile`` and MetadataExtractor read them).

``tflite-support`` (the populator) cannot be installed beside this stack, so the metadata flatbuffer is built
here with ``flatbuffers`` and the model is re-packed with LiteRT's own schema (``ai_edge_litert
.schema_py_generated``), weight buffers kept 16-byte aligned. Deterministic: fixed zip timestamps, sorted JSON.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

from edgepack.contract.metadata import CLASS_LOGITS, Contract

METADATA_NAME = "TFLITE_METADATA"
MODEL_IDENTIFIER = b"TFL3"
METADATA_IDENTIFIER = b"M001"
MIN_PARSER_VERSION = "1.0.0"
LABELS_FILE = "labels.txt"
CONTRACT_FILE = "edgepack_contract.json"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)

# metadata_schema.fbs enums
_FILE_UNKNOWN, _FILE_TENSOR_AXIS_LABELS = 0, 2
_COLOR = {"RGB": 1, "grayscale": 2}
_CONTENT_FEATURE, _CONTENT_IMAGE = 1, 2
_OPTIONS_NORMALIZATION = 1


class _Tables:
    """Just enough builders for the metadata_schema.fbs tables this writer emits (fields by slot)."""

    def __init__(self) -> None:
        import flatbuffers

        self.b = flatbuffers.Builder(1024)

    def string(self, text: str | None) -> int | None:
        return None if text is None else self.b.CreateString(text)

    def vector(self, offsets: list[int]) -> int:
        self.b.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            self.b.PrependUOffsetTRelative(offset)
        return self.b.EndVector()

    def floats(self, values: list[float]) -> int:
        self.b.StartVector(4, len(values), 4)
        for value in reversed(values):
            self.b.PrependFloat32(value)
        return self.b.EndVector()

    def table(self, slots: int, fields: dict[int, tuple[str, Any]]) -> int:
        """``fields``: slot -> ("offset" | "byte" | "uint", value); ``None`` values are left out."""
        self.b.StartObject(slots)
        for slot, (kind, value) in sorted(fields.items(), reverse=True):
            if value is None:
                continue
            if kind == "offset":
                self.b.PrependUOffsetTRelativeSlot(slot, value, 0)
            elif kind == "byte":
                self.b.PrependUint8Slot(slot, value, 0)
            else:
                self.b.PrependUint32Slot(slot, value, 0)
        return self.b.EndObject()

    def associated_file(self, name: str, description: str, kind: int) -> int:
        name_o, desc_o = self.string(name), self.string(description)
        return self.table(5, {0: ("offset", name_o), 1: ("offset", desc_o), 2: ("byte", kind)})


def metadata_flatbuffer(contract: Contract, tensor_order: tuple[list[str], list[str]] | None = None) -> bytes:
    """The ``ModelMetadata`` flatbuffer of ``contract``; ``tensor_order`` is the subgraph's (inputs, outputs)
    tensor names, which the per-tensor metadata must follow."""
    t = _Tables()
    inputs = _ordered(contract.inputs, tensor_order[0] if tensor_order else None)
    outputs = _ordered(contract.outputs, tensor_order[1] if tensor_order else None)
    input_tables = [_input_metadata(t, spec) for spec in inputs]
    labelled = next((spec.name for spec in outputs if spec.semantics == CLASS_LOGITS), None)
    output_tables = [_output_metadata(t, spec, contract, labelled == spec.name) for spec in outputs]
    inputs_v, outputs_v = t.vector(input_tables), t.vector(output_tables)
    sub_name = t.string("main")
    subgraph = t.table(5, {0: ("offset", sub_name), 2: ("offset", inputs_v), 3: ("offset", outputs_v)})
    contract_file = t.associated_file(CONTRACT_FILE, "edgepack deployment contract (JSON): labels, I/O, "
                                      "preprocessing, source sha256, recipe, toolchain", _FILE_UNKNOWN)
    files_v = t.vector([contract_file])
    subgraphs_v = t.vector([subgraph])
    name = t.string(contract.model)
    description = t.string(contract.summary())
    version = t.string(f"sha256:{contract.source_sha256}")
    author = t.string(f"edgepack {contract.edgepack_version}")
    parser = t.string(MIN_PARSER_VERSION)
    root = t.table(8, {0: ("offset", name), 1: ("offset", description), 2: ("offset", version),
                       3: ("offset", subgraphs_v), 4: ("offset", author), 6: ("offset", files_v),
                       7: ("offset", parser)})
    t.b.Finish(root, METADATA_IDENTIFIER)
    return bytes(t.b.Output())


def _ordered(specs: tuple[Any, ...], names: list[str] | None) -> list[Any]:
    if not names:
        return list(specs)
    by_name = {spec.name: spec for spec in specs}
    if set(names) != set(by_name):
        return list(specs)
    return [by_name[name] for name in names]


def _input_metadata(t: _Tables, spec: Any) -> int:
    pre = spec.preprocess
    process_units = None
    content_kind, properties = _CONTENT_FEATURE, None
    if pre is not None:
        scale = pre["scale"] or 1.0
        channels = max(len(pre["mean"]), len(pre["std"]), 1)
        mean = [m / scale for m in (pre["mean"] or [0.0] * channels)]
        std = [s / scale for s in (pre["std"] or [1.0] * channels)]
        mean_v, std_v = t.floats(mean), t.floats(std)
        normalization = t.table(2, {0: ("offset", mean_v), 1: ("offset", std_v)})
        unit = t.table(2, {0: ("byte", _OPTIONS_NORMALIZATION), 1: ("offset", normalization)})
        process_units = t.vector([unit])
        if pre.get("size") and pre.get("colour_order") in _COLOR:
            height, width = pre["size"]
            size = t.table(2, {0: ("uint", int(width)), 1: ("uint", int(height))})
            properties = t.table(2, {0: ("byte", _COLOR[pre["colour_order"]]), 1: ("offset", size)})
            content_kind = _CONTENT_IMAGE
    if properties is None:
        properties = t.table(0, {})
    content = t.table(3, {0: ("byte", content_kind), 1: ("offset", properties)})
    description = f"{spec.dtype} {'x'.join(map(str, spec.shape))} {spec.layout or ''}".strip()
    if pre is not None:
        description += f"; preprocess: (x * {pre['scale']:g} - mean {pre['mean']}) / std {pre['std']}"
        if pre.get("description"):
            description += f" ({pre['description']})"
    if spec.quant is not None:
        description += f"; quantized: real = {spec.quant['scale']:g} * (q - {spec.quant['zero_point']})"
    name, desc = t.string(spec.name), t.string(description)
    return t.table(7, {0: ("offset", name), 1: ("offset", desc), 3: ("offset", content),
                       4: ("offset", process_units)})


def _output_metadata(t: _Tables, spec: Any, contract: Contract, labelled: bool) -> int:
    files = None
    if labelled and contract.labels is not None:
        files = t.vector([t.associated_file(LABELS_FILE, "class labels, one per line, in output index order",
                                            _FILE_TENSOR_AXIS_LABELS)])
    properties = t.table(0, {})
    content = t.table(3, {0: ("byte", _CONTENT_FEATURE), 1: ("offset", properties)})
    description = f"{spec.semantics}: {spec.dtype} {'x'.join(map(str, spec.shape))}"
    if spec.quant is not None:
        description += f"; quantized: real = {spec.quant['scale']:g} * (q - {spec.quant['zero_point']})"
    name, desc = t.string(spec.name), t.string(description)
    return t.table(7, {0: ("offset", name), 1: ("offset", desc), 3: ("offset", content),
                       6: ("offset", files)})


def associated_files(contract: Contract) -> dict[str, bytes]:
    files = {CONTRACT_FILE: (contract.to_json() + "\n").encode()}
    if contract.labels is not None:
        files[LABELS_FILE] = ("\n".join(contract.labels) + "\n").encode()
    return files


def write_tflite_contract(path: Path, contract: Contract) -> bool:
    """Embed ``contract`` into the .tflite at ``path`` (in place), replacing earlier metadata and packed
    files. Returns ``False`` (file untouched) for models whose buffers live outside the flatbuffer (>2 GB)."""
    from ai_edge_litert import schema_py_generated as schema

    data = path.read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    if any((getattr(b, "offset", 0) or 0) > 1 for b in model.buffers or []):
        return False
    graph = model.subgraphs[0] if model.subgraphs else None
    order = None
    if graph is not None:
        names = [t.name.decode() if isinstance(t.name, bytes) else t.name for t in graph.tensors]
        order = ([names[i] for i in graph.inputs], [names[i] for i in graph.outputs])
    payload = metadata_flatbuffer(contract, order)
    model.buffers = [_AlignedBuffer.of(b) for b in (model.buffers or [])]
    entry = next((m for m in (model.metadata or []) if _name(m.name) == METADATA_NAME), None)
    if entry is not None:
        model.buffers[entry.buffer] = _AlignedBuffer(payload)
    else:
        model.buffers.append(_AlignedBuffer(payload))
        entry = schema.MetadataT()
        entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
        model.metadata = [*(model.metadata or []), entry]
    import flatbuffers

    builder = flatbuffers.Builder(len(data) + len(payload) + 1024)
    builder.Finish(model.Pack(builder), MODEL_IDENTIFIER)
    out = io.BytesIO()
    out.write(builder.Output())
    with zipfile.ZipFile(out, "a") as archive:
        for name, content in sorted(associated_files(contract).items()):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED  # MetadataExtractor reads uncompressed entries only
            info.external_attr = 0o644 << 16
            archive.writestr(info, content)
    tmp = path.with_name(path.name + ".contract-tmp")
    tmp.write_bytes(out.getvalue())
    tmp.replace(path)
    return True


def _name(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _AlignedBuffer:
    """A ``BufferT`` stand-in whose data vector is 16-byte aligned (``force_align: 16`` in schema.fbs) and
    copied in one slice (the generated object API packs byte by byte, or unaligned from numpy)."""

    def __init__(self, data: bytes | None) -> None:
        self.data = data

    @classmethod
    def of(cls, buffer: Any) -> "_AlignedBuffer":
        if buffer is None or buffer.data is None:
            return cls(None)
        data = buffer.data
        return cls(data.tobytes() if hasattr(data, "tobytes") else bytes(data))

    def Pack(self, builder: Any) -> int:  # noqa: N802 - flatbuffers object API
        from ai_edge_litert import schema_py_generated as schema

        vector = None
        if self.data is not None:
            size = len(self.data)
            builder.StartVector(1, size, 16)
            builder.head = builder.head - size
            builder.Bytes[builder.head:builder.head + size] = self.data
            vector = builder.EndVector()
        schema.BufferStart(builder)
        if vector is not None:
            schema.BufferAddData(builder, vector)
        return schema.BufferEnd(builder)


def read_tflite_contract(path: Path) -> Contract | None:
    """The contract packed in a .tflite (from its appended zip), or ``None``."""
    try:
        with zipfile.ZipFile(path) as archive:
            return Contract.from_json(archive.read(CONTRACT_FILE))
    except (zipfile.BadZipFile, KeyError):
        return None


def tflite_metadata_buffer(path: Path) -> bytes | None:
    """The raw ``TFLITE_METADATA`` flatbuffer of a .tflite, found through the model's metadata table."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(path.read_bytes(), 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if _name(entry.Name()) == METADATA_NAME:
            return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return None
