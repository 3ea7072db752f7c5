"""OpenVINO IR: the contract in the model's ``rt_info`` under ``edgepack`` (what
``model.set_rt_info(value, ["edgepack", key])`` writes), as ``<rt_info><edgepack><KEY value="..."/>``.

The IR is final when the hook runs, so the entries are added to ``model.xml`` itself (the weights file is not
touched). Read back with ``ov.Core().read_model(xml).get_rt_info()["edgepack"]`` or
``model.get_rt_info(["edgepack", "labels"])``."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from edgepack.contract.metadata import KEY_PREFIX, Contract

SECTION = "edgepack"


def write_openvino_contract(xml: Path, contract: Contract) -> None:
    """Replace the ``edgepack`` section of ``xml``'s model-level rt_info with ``contract`` (in place)."""
    tree = ET.parse(str(xml))
    root = tree.getroot()
    rt_info = root.find("rt_info")
    if rt_info is None:
        rt_info = ET.SubElement(root, "rt_info")
        rt_info.text, rt_info.tail = "\n\t\t", "\n"
    for old in rt_info.findall(SECTION):
        rt_info.remove(old)
    children = list(rt_info)
    if children:
        children[-1].tail = "\n\t\t"
    section = ET.SubElement(rt_info, SECTION)
    section.text, section.tail = "\n\t\t\t", "\n\t"
    items = sorted(contract.flat().items())
    for index, (key, value) in enumerate(items):
        entry = ET.SubElement(section, key[len(KEY_PREFIX):], {"value": value})
        entry.tail = "\n\t\t" if index == len(items) - 1 else "\n\t\t\t"
    tmp = xml.with_name(xml.name + ".contract-tmp")
    tree.write(str(tmp), encoding="utf-8", xml_declaration=True, short_empty_elements=True)
    tmp.replace(xml)


def read_openvino_contract(xml: Path) -> Contract | None:
    """The contract in an IR's rt_info, read through OpenVINO (``None`` when it has none)."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    if not model.has_rt_info([SECTION, "contract"]):
        return None
    return Contract.from_json(model.get_rt_info([SECTION, "contract"]).astype(str))
