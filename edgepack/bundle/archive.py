"""Bundles as one ``.zip`` file (``export --archive``), written deterministically and unpacked defensively.

Packing: entries sorted, under one top folder ``NAME.edgepack/``, fixed timestamps and modes, so the
same bundle always gives the same bytes. Unpacking refuses (one :class:`~edgepack.errors.InputError`, nothing written outside ``into``) anything a hostile archive could use to write
outside its folder or exhaust the disk: absolute paths, ``..`` components, symlinks and other special
files, duplicate names, more than one top folder, and an uncompressed size beyond a bound.
"""

from __future__ import annotations

import os
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from edgepack._fs import owned_name
from edgepack.errors import InputError

FIXED_DATE = (1980, 1, 1, 0, 0, 0)
MAX_UNPACKED_BYTES = 16 << 30
"""Refuse archives that claim to unpack to more than this (zip bombs)."""


def pack(bundle_dir: Path, archive: Path) -> Path:
    """Write ``bundle_dir`` as ``archive`` (a temp file beside it renamed into place)."""
    top = PurePosixPath(bundle_dir.name)
    handle, temp_name = tempfile.mkstemp(prefix=owned_name(f".{archive.name}."), suffix=".tmp", dir=archive.parent)
    os.close(handle)
    try:
        with zipfile.ZipFile(temp_name, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
                info = zipfile.ZipInfo(str(top / path.relative_to(bundle_dir).as_posix()), date_time=FIXED_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.create_system = 3  # unix, so the mode bits above mean what they say
                zf.writestr(info, path.read_bytes())
        with open(temp_name, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(temp_name, 0o644)  # mkstemp creates 0600; a bundle is meant to be shared
        os.replace(temp_name, archive)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return archive


def is_bundle_archive(path: Path) -> bool:
    """True when ``path`` is a zip whose single top folder holds a ``manifest.json`` (what ``pack`` writes)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    tops = {name.split("/", 1)[0] for name in names}
    return len(tops) == 1 and f"{next(iter(tops))}/manifest.json" in names


def _member_path(info: zipfile.ZipInfo, archive: Path) -> PurePosixPath:
    name = info.filename
    path = PurePosixPath(name)
    if name.startswith("/") or "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise InputError(f"{archive}: entry '{name}' has an absolute path; refusing to unpack")
    raw_parts = name.rstrip("/").split("/") if info.is_dir() else name.split("/")
    if ".." in raw_parts:
        raise InputError(f"{archive}: entry '{name}' escapes the bundle ('..' in its path); refusing to unpack")
    if any(part in {"", "."} for part in raw_parts) or not path.parts:
        raise InputError(f"{archive}: entry '{name}' has an empty or '.' path component; refusing to unpack")
    file_type = stat.S_IFMT(info.external_attr >> 16)
    if info.create_system == 3 and file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
        kind = "a symlink" if file_type == stat.S_IFLNK else "a special file"
        raise InputError(f"{archive}: entry '{name}' is {kind}; refusing to unpack")
    return path


def unpack(archive: Path, into: Path) -> Path:
    """Unpack ``archive`` into the empty directory ``into``; return the bundle folder inside it."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{archive}: not a readable zip archive: {exc}") from None
    with zf:
        infos = zf.infolist()
        members = [(info, _member_path(info, archive)) for info in infos]
        names = [str(path) for _, path in members]
        if len(set(names)) != len(names):
            raise InputError(f"{archive}: duplicate entries; refusing to unpack")
        tops = {path.parts[0] for _, path in members}
        if len(tops) != 1:
            raise InputError(f"{archive}: expected one top folder NAME.edgepack/, found {sorted(tops)[:3]}")
        if sum(info.file_size for info in infos) > MAX_UNPACKED_BYTES:
            raise InputError(f"{archive}: unpacks to more than {MAX_UNPACKED_BYTES >> 30} GiB; refusing")
        root = into.resolve()
        for info, path in members:
            target = (root / path).resolve()
            if not target.is_relative_to(root):
                raise InputError(f"{archive}: entry '{info.filename}' escapes the bundle; refusing to unpack")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as source, target.open("xb") as sink:
                    written = 0
                    for chunk in iter(lambda: source.read(1 << 20), b""):
                        written += len(chunk)
                        if written > info.file_size:
                            raise InputError(f"{archive}: entry '{info.filename}' is larger than its header says")
                        sink.write(chunk)
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                raise InputError(f"{archive}: entry '{info.filename}' collides with another entry; refusing to unpack") from None
    return root / tops.pop()
