"""ONNX: the contract as ``model.metadata_props`` (``edgepack.*`` keys; structured values are JSON).

Read back with ``onnxruntime.InferenceSession(path).get_modelmeta().custom_metadata_map`` or
``onnx.load(path).metadata_props``."""

from __future__ import annotations

from pathlib import Path

from edgepack.contract.metadata import KEY_PREFIX, Contract


def write_onnx_contract(path: Path, contract: Contract) -> None:
    """Replace any ``edgepack.*`` metadata_props of the ONNX file at ``path`` with ``contract`` (in place;
    external data files are left untouched)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(KEY_PREFIX)]
    del model.metadata_props[:]
    for key, value in kept + sorted(contract.flat().items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    if not model.doc_string:
        model.doc_string = contract.summary()
    tmp = path.with_name(path.name + ".contract-tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)


def read_onnx_contract(path: Path) -> Contract | None:
    """The contract in an ONNX file's metadata_props (``None`` when it has none)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == f"{KEY_PREFIX}contract":
            return Contract.from_json(prop.value)
    return None
