"""The search journal: one JSON object per line in ``OUT/journal.jsonl``, appended and fsynced per trial.

It makes a search resumable (re-running with the same ``--out`` replays finished trials instead of measuring
them again) and is the cache of identical candidates. The first line records the *identity* of the
measurements (source, target, runner, data, bench settings); a journal of different measurements is refused
rather than mixed in. Search constraints and the seed are not part of the identity: changing them re-uses
every measurement. A torn last line (a crash mid-write) is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from edgepack.errors import InputError

JOURNAL_FILE = "journal.jsonl"
JOURNAL_VERSION = 1


def identity_sha256(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


class Journal:
    """Append-only record of a search's measurements."""

    def __init__(self, path: Path, records: list[dict[str, Any]]) -> None:
        self.path = path
        self.records = records

    @classmethod
    def open(cls, out: Path, identity: dict[str, Any]) -> "Journal":
        """Open ``out/journal.jsonl`` (created with ``identity`` when absent); refuse a different identity."""
        path = Path(out) / JOURNAL_FILE
        digest = identity_sha256(identity)
        if not path.exists():
            out.mkdir(parents=True, exist_ok=True)
            journal = cls(path, [])
            journal.append({"kind": "header", "version": JOURNAL_VERSION, "identity": identity, "identity_sha256": digest})
            return journal
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a crash: that trial is simply measured again
        header = records[0] if records and records[0].get("kind") == "header" else None
        if header is None or header.get("version") != JOURNAL_VERSION:
            raise InputError(f"{path}: not an edgepack search journal", hint="choose another --out")
        if header.get("identity_sha256") != digest:
            changed = sorted(k for k in set(identity) | set(header["identity"])
                             if header["identity"].get(k) != json.loads(json.dumps(identity.get(k), default=str)))
            raise InputError(
                f"{out}: holds a search with different measurement settings ({', '.join(changed) or 'identity'})",
                hint="use another --out, or the same source/target/runner/data/bench settings to resume",
            )
        return cls(path, records)

    def append(self, record: dict[str, Any]) -> None:
        """Append one record and make it durable before returning."""
        line = json.dumps(record, sort_keys=True, default=str)
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(line + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        self.records.append(record)

    def find(self, kind: str, **match: Any) -> dict[str, Any] | None:
        """The latest record of ``kind`` whose fields equal ``match``."""
        for record in reversed(self.records):
            if record.get("kind") == kind and all(record.get(k) == v for k, v in match.items()):
                return record
        return None
