"""Property tests (Hypothesis) over everything edgepack parses from users: profiles, recipes, manifests,
zip bundles and input specs. The property is always the same: a valid result or one EdgepackError,
never another exception (which the CLI would show as a traceback)."""

from __future__ import annotations

import json
import math
import tempfile
import zipfile
from pathlib import Path

import tomli_w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgepack._toml import read_toml
from edgepack.bundle.archive import unpack
from edgepack.bundle.hashing import canonical_json
from edgepack.bundle.verify import verify_bundle
from edgepack.compress.recipe import load_recipe_file
from edgepack.errors import EdgepackError
from edgepack.models.input_spec import parse_input_spec
from edgepack.targets.registry import PROFILES_DIR, load_registry

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
toml_scalars = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.text(max_size=20))
toml_values = st.recursive(
    toml_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=3),
    max_leaves=8,
)
BASE_PROFILE = read_toml(PROFILES_DIR / "host-ort.toml")


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(sorted(BASE_PROFILE)) | st.text(min_size=1, max_size=12), value=toml_values)
def test_a_profile_with_any_field_changed_loads_or_names_the_problem(key, value):
    data = {**BASE_PROFILE, "id": "mutant", key: value} if key != "id" else {**BASE_PROFILE, "id": "mutant"}
    with tempfile.TemporaryDirectory() as folder:
        path = _write(Path(folder), "mutant.toml", tomli_w.dumps(data).encode())
        try:
            registry = load_registry(extra=[path])
        except EdgepackError as exc:
            assert "mutant.toml" in str(exc)
        else:
            assert registry.get("mutant").id == "mutant"


@SETTINGS
@given(blob=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_as_a_profile_or_recipe_file_give_a_clean_error(blob):
    with tempfile.TemporaryDirectory() as folder:
        profile = _write(Path(folder), "junk.toml", blob)
        for load in (lambda: load_registry(extra=[profile]), lambda: load_recipe_file(profile)):
            try:
                load()
            except EdgepackError:
                pass


@SETTINGS
@given(manifest=json_values)
def test_any_manifest_json_verifies_or_fails_with_a_bundle_error(manifest):
    with tempfile.TemporaryDirectory() as folder:
        bundle = Path(folder) / "x.edgepack"
        bundle.mkdir()
        (bundle / "manifest.json").write_text(json.dumps(manifest))
        try:
            result = verify_bundle(bundle)
        except EdgepackError:
            return
        assert result.files_checked == 0  # only an empty, well-formed manifest can verify an empty bundle


@SETTINGS
@given(data=st.dictionaries(st.text(max_size=10), json_values, max_size=6),
       measurement=st.floats(allow_nan=True, allow_infinity=True))
def test_canonical_json_is_a_stable_round_trip(data, measurement):
    encoded = canonical_json(data)
    assert json.loads(encoded) == data
    assert canonical_json(json.loads(encoded)) == encoded
    written = json.loads(canonical_json({"value": measurement}))["value"]  # strict JSON: no NaN/Infinity tokens
    assert written == measurement or (written is None and not math.isfinite(measurement))


member_names = st.lists(
    st.lists(st.sampled_from(["a", "b", ".", "..", "/", "\\", ":"]), min_size=1, max_size=8).map(lambda p: "x.edgepack/" + "".join(p))
    | st.sampled_from(["/etc/passwd", "../evil", "x.edgepack/../../evil", "C:\\evil", "x.edgepack/a/../../b"]),
    min_size=1, max_size=5,
)


@SETTINGS
@given(names=member_names)
@example(names=["x.edgepack/a", "x.edgepack/."])  # found by Hypothesis: '.' resolved onto the top folder
@example(names=["x.edgepack/a", "x.edgepack/a/b"])  # a file where a folder must go
def test_unpacking_never_writes_outside_its_folder(names):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        archive = root / "b.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for name in names:
                zf.writestr(name, b"data")
        into = root / "into"
        into.mkdir()
        try:
            unpack(archive, into)
        except EdgepackError:
            pass
        outside = [p for p in root.rglob("*") if p not in (archive, into) and not p.is_relative_to(into)]
        assert not outside, outside


@SETTINGS
@given(text=st.text(max_size=40))
def test_any_input_spec_text_parses_or_is_refused(text):
    try:
        spec = parse_input_spec(text)
    except EdgepackError:
        return
    assert spec.name and all(isinstance(d, (int, str)) for d in spec.shape)
