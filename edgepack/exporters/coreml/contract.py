"""Core ML: the contract in the spec's ``description.metadata.userDefined`` (``edgepack.*`` keys, structured
values JSON; what ``MLModel.user_defined_metadata`` shows), plus ``shortDescription`` on the model and on each
input/output, ``author`` and ``versionString``. Labels go in ``edgepack.labels`` (no ClassifierConfig: that
would change the model's outputs to a class label and a probability dictionary).

The spec inside the ``.mlpackage`` is rewritten in place (weights untouched), serialised deterministically.
Read back with ``coremltools.models.MLModel(path, skip_model_load=True).user_defined_metadata``."""

from __future__ import annotations

from pathlib import Path

from edgepack.contract.metadata import KEY_PREFIX, Contract


def write_coreml_contract(package: Path, contract: Contract) -> None:
    from coremltools.proto import Model_pb2

    from edgepack.exporters.coreml.graph import spec_path

    path = spec_path(package)
    spec = Model_pb2.Model()
    spec.ParseFromString(path.read_bytes())
    metadata = spec.description.metadata
    for key in [k for k in metadata.userDefined if k.startswith(KEY_PREFIX)]:
        del metadata.userDefined[key]
    for key, value in contract.flat().items():
        metadata.userDefined[key] = value
    metadata.shortDescription = contract.summary()
    metadata.author = f"edgepack {contract.edgepack_version}"
    metadata.versionString = f"sha256:{contract.source_sha256}"
    by_name = {t.name: t for t in (*contract.inputs, *contract.outputs)}
    for feature in (*spec.description.input, *spec.description.output):
        tensor = by_name.get(feature.name)
        if tensor is None:
            continue
        if tensor.preprocess is not None:
            pre = tensor.preprocess
            text = (f"{tensor.layout or ''} {'x'.join(map(str, tensor.shape))}; preprocess: (x * {pre['scale']:g} "
                    f"- mean {pre['mean']}) / std {pre['std']}; colour {pre['colour_order']}")
            if pre.get("description"):
                text += f" ({pre['description']})"
        else:
            text = f"{tensor.semantics or 'input'}: {'x'.join(map(str, tensor.shape))}"
            if tensor.semantics == "class logits" and contract.labels is not None:
                text += "; labels in metadata edgepack.labels"
        feature.shortDescription = text.strip()
    tmp = path.with_name(path.name + ".contract-tmp")
    tmp.write_bytes(spec.SerializeToString(deterministic=True))
    tmp.replace(path)


def read_coreml_contract(package: Path) -> Contract | None:
    import coremltools as ct

    metadata = ct.models.MLModel(str(package), skip_model_load=True).user_defined_metadata
    text = metadata.get(f"{KEY_PREFIX}contract")
    return Contract.from_json(text) if text else None
