"""Bundle writing is atomic; verify catches modified, missing and extra files."""

from __future__ import annotations

import json

import pytest

from edgepack import api

from edgepack.bundle.verify import verify_bundle
from edgepack.bundle.writer import BundleWriter
from edgepack.errors import BundleError, OutputError


@pytest.fixture()
def bundle(tmp_path):
    return api.export("demo:digits", ["host-ort"], out=tmp_path).bundle


def test_manifest_lists_every_file_with_its_hash(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    assert verify_bundle(bundle).files_checked == len(on_disk)


def test_failure_while_staging_keeps_the_previous_bundle(bundle, monkeypatch):
    before = (bundle / "manifest.json").read_bytes()
    calls = {"n": 0}
    original = BundleWriter.add_file

    def failing_add_file(self, source, relative):
        calls["n"] += 1
        original(self, source, relative)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(BundleWriter, "add_file", failing_add_file)
    with pytest.raises(OutputError, match="no space left"):  # one clean error, not an OSError traceback
        api.export("demo:digits", ["host-ort", "x86-openvino"], out=bundle.parent, recipe_chain=["fp32"])
    assert calls["n"] == 1
    assert (bundle / "manifest.json").read_bytes() == before
    verify_bundle(bundle)
    leftovers = [p.name for p in bundle.parent.iterdir() if p.name != bundle.name]
    assert leftovers == []


def test_reexport_replaces_the_bundle_atomically(bundle):
    result = api.export("demo:digits", ["host-ort", "x86-openvino"], out=bundle.parent, recipe_chain=["fp32"])
    assert result.bundle == bundle
    assert set(json.loads((bundle / "manifest.json").read_text())["targets"]) == {"host-ort", "x86-openvino"}
    assert [p.name for p in bundle.parent.iterdir()] == [bundle.name]


def test_refuses_to_replace_a_directory_that_is_not_a_bundle(tmp_path):
    (tmp_path / "digits-cnn.edgepack").mkdir()
    (tmp_path / "digits-cnn.edgepack" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a bundle edgepack wrote"):
        api.export("demo:digits", ["host-ort"], out=tmp_path)
    assert (tmp_path / "digits-cnn.edgepack" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("change", ["extra", "missing", "manifest"])
def test_verify_rejects_tampering(bundle, change):
    if change == "extra":
        (bundle / "artifacts" / "host-ort" / "payload.bin").write_bytes(b"x")
        needle = "unexpected file"
    elif change == "missing":
        (bundle / "reports" / "host-ort" / "attempts.json").unlink()
        needle = "missing file"
    else:
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["schema_version"] = 0
        (bundle / "manifest.json").write_text(json.dumps(manifest))
        needle = "schema_version"
    with pytest.raises(BundleError, match=needle):
        verify_bundle(bundle)


def test_signed_bundle_verifies_and_detects_tampering(tmp_path):
    from edgepack.bundle.signing import generate_keypair

    key, pub = generate_keypair(tmp_path / "keys" / "release")
    other_key, other_pub = generate_keypair(tmp_path / "keys" / "other")
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    bundle = api.export("demo:digits", ["host-ort"], out=tmp_path / "out", sign_key=key).bundle
    assert verify_bundle(bundle, pub).signed
    with pytest.raises(BundleError, match="signature does not match"):
        verify_bundle(bundle, other_pub)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["targets"]["host-ort"]["recipe"] = "something-else"
    (bundle / "manifest.json").write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n")
    with pytest.raises(BundleError, match="signature does not match"):
        verify_bundle(bundle, pub)


def test_unsigned_bundle_fails_signature_check(bundle, tmp_path):
    from edgepack.bundle.signing import generate_keypair

    _, pub = generate_keypair(tmp_path / "k")
    with pytest.raises(BundleError, match="not signed"):
        verify_bundle(bundle, pub)


def test_keygen_refuses_to_overwrite(tmp_path):
    from edgepack.bundle.signing import generate_keypair
    from edgepack.errors import InputError

    generate_keypair(tmp_path / "k")
    with pytest.raises(InputError, match="already exists"):
        generate_keypair(tmp_path / "k")
