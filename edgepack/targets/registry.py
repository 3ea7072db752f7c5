"""Loads every ``profiles/*.toml`` into validated :class:`TargetProfile` objects.

The registry is built once (``load_registry()``) and passed to whoever needs it; nothing is global.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepack._toml import read_toml, validate
from edgepack.errors import ProfileError, UnknownTargetError
from edgepack.targets.schema import TargetProfile

PROFILES_DIR = Path(__file__).with_name("profiles")


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass(frozen=True)
class Registry:
    """An immutable, id-indexed set of target profiles."""

    profiles: dict[str, TargetProfile]

    def __iter__(self) -> Iterator[TargetProfile]:
        return iter(sorted(self.profiles.values(), key=lambda p: p.id))

    def __len__(self) -> int:
        return len(self.profiles)

    def ids(self) -> list[str]:
        return sorted(self.profiles)

    def get(self, target_id: str) -> TargetProfile:
        """Return the profile ``target_id`` (case-insensitive) or raise :class:`UnknownTargetError` suggesting
        close ids."""
        try:
            return self.profiles[target_id]
        except KeyError:
            pass
        folded = target_id.strip().casefold()
        matches = [pid for pid in self.profiles if pid.casefold() == folded]
        if len(matches) == 1:  # ids are case-insensitive: HOST-ORT is host-ort
            return self.profiles[matches[0]]
        shown = target_id if target_id.isprintable() and len(target_id) <= 64 else repr(target_id[:64])
        by_folded = {pid.casefold(): pid for pid in self.ids()}
        close = [by_folded[c] for c in difflib.get_close_matches(folded, list(by_folded), n=3, cutoff=0.5)]
        hint = f"did you mean {', '.join(close)}?" if close else "run 'edgepack targets list'"
        raise UnknownTargetError(f"unknown target '{shown}'", hint=hint)


def _raw_profiles(paths: Sequence[Path]) -> dict[str, tuple[Path, dict[str, Any]]]:
    raw: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in paths:
        data = read_toml(path)
        profile_id = data.get("id")
        if not isinstance(profile_id, str):
            raise ProfileError(f"{path}: id: missing or not a string")
        if profile_id != path.stem:
            raise ProfileError(f"{path}: id: {profile_id!r} must match the file name {path.stem!r}")
        raw[profile_id] = (path, data)
    return raw


def _resolve(profile_id: str, raw: dict[str, tuple[Path, dict[str, Any]]], chain: tuple[str, ...] = ()) -> dict[str, Any]:
    path, data = raw[profile_id]
    parent = data.get("extends")
    if parent is None:
        return data
    if parent in chain or parent == profile_id:
        raise ProfileError(f"{path}: extends: cycle through {parent!r}")
    if parent not in raw:
        raise ProfileError(f"{path}: extends: unknown profile {parent!r}")
    base = {k: v for k, v in _resolve(parent, raw, chain + (profile_id,)).items() if k not in ("id", "extends")}
    return _deep_merge(base, data)


def load_registry(directory: Path | None = None, extra: Sequence[Path] = ()) -> Registry:
    """Load and validate every profile in ``directory`` (default: the shipped profiles), plus the profile
    files ``extra`` (a user's own devices; they may ``extends`` a shipped profile, and replace one by id)."""
    directory = directory or PROFILES_DIR
    raw = _raw_profiles(sorted(directory.glob("*.toml")))
    if not raw:
        raise ProfileError(f"{directory}: no *.toml target profiles found")
    for path in extra:
        if not Path(path).is_file():
            raise ProfileError(f"{path}: profile file not found")
    raw.update(_raw_profiles([Path(p) for p in extra]))
    profiles = {pid: validate(TargetProfile, _resolve(pid, raw), raw[pid][0]) for pid in raw}
    for pid, profile in profiles.items():
        _check_op_vocabularies(profile, raw[pid][0])
    return Registry(profiles)


def _check_op_vocabularies(profile: TargetProfile, path: Path) -> None:
    """Each accelerator's ``op_vocabulary`` is one an installed exporter declares (a new runtime brings its own)."""
    from edgepack.exporters.registry import op_vocabularies

    known = op_vocabularies()
    for name, accelerator in profile.accelerators.items():
        if accelerator.op_vocabulary not in known:
            raise ProfileError(f"{path}: accelerators.{name}.op_vocabulary: unknown op vocabulary "
                               f"'{accelerator.op_vocabulary}' (known: {', '.join(sorted(known))})")
