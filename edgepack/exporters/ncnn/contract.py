"""ncnn has no metadata slot in ``.param``/``.bin``: the contract travels beside them as ``model.contract.json``."""

from __future__ import annotations

from pathlib import Path

from edgepack.contract.metadata import Contract

CONTRACT_FILE = "model.contract.json"


def contract_path(param: Path) -> Path:
    """Where the contract of the model ``param`` lies."""
    return param.with_name(CONTRACT_FILE)


def write_ncnn_contract(param: Path, contract: Contract) -> None:
    """Write ``contract`` beside ``param`` (deterministic JSON)."""
    contract_path(param).write_text(contract.to_json() + "\n", encoding="utf-8")


def read_ncnn_contract(param: Path) -> Contract | None:
    """The contract beside ``param`` (``None`` when there is none)."""
    path = contract_path(param)
    return Contract.from_json(path.read_text(encoding="utf-8")) if path.exists() else None
