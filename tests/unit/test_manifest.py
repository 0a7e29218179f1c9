"""The profiles manifest: deterministic ids and bytes, validation on read, merging with conflicts."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nimbuild.errors import ManifestError
from nimbuild.profiles.manifest import (
    Manifest,
    Profile,
    WorkspaceFile,
    load_manifest,
    merge_manifests,
    parse_manifest,
    profile_id,
)
from nimbuild.profiles.tags import describe


def _file(content: bytes, uri: str) -> WorkspaceFile:
    return WorkspaceFile(uri=uri, digest="sha256:" + hashlib.sha256(content).hexdigest(), size=len(content))


def _profile(precision="fp16", cc="8.9", content=b"engine", backend="tensorrt_rtx", **extra_tags) -> Profile:
    tags = {"backend": backend, "type": "prebuilt", "precision": precision, "compute_capability": cc,
            "profile": "throughput", "tp": 1, **extra_tags}
    return Profile.create("minilm-embed", "0.1.0", tags, {"model.plan": _file(content, "p/model.plan")},
                          requires={"min_compute_capability": cc})


def test_id_is_sha256_of_canonical_model_release_tags_files():
    p = _profile()
    canonical = json.dumps({"model": "minilm-embed", "release": "0.1.0", "tags": p.tags,
                            "files": {"model.plan": p.files["model.plan"].digest}},
                           sort_keys=True, separators=(",", ":"))
    assert p.id == hashlib.sha256(canonical.encode()).hexdigest() and len(p.id) == 64
    # tags are strings as in NIM manifests, whatever YAML made of them
    assert p.tags["tp"] == "1"
    # the id ignores where files live and how they were built, but not what they hold
    assert profile_id(p.model, p.release, p.tags, {"model.plan": _file(b"engine", "elsewhere")}) == p.id
    assert _profile(content=b"other engine").id != p.id
    assert _profile(precision="fp8").id != p.id


def test_descriptions_are_readable_and_built_from_tags():
    assert _profile().description == "tensorrt_rtx-sm89-fp16-throughput"
    assert describe({"backend": "tensorrt", "compute_capability": "8.0,8.6", "precision": "fp8", "tp": "2",
                     "profile": "latency"}) == "tensorrt-sm80-sm86-fp8-tp2-latency"
    assert describe({"llm_engine": "tensorrt_llm", "precision": "bf16", "gpu": "H100", "feat_lora": "true",
                     "pp": "2"}) == "tensorrt_llm-h100-bf16-pp2-lora"


def test_dump_is_byte_stable_and_round_trips(tmp_path):
    profiles = [_profile("fp16"), _profile("fp8", cc="9.0"), _profile("fp16", cc="8.0")]
    a = Manifest(profiles).dumps()
    b = Manifest(list(reversed(profiles))).dumps()
    assert a == b, "order of construction must not change the bytes"
    path = tmp_path / "profiles.yaml"
    Manifest(profiles).save(path)
    loaded = load_manifest(path)
    assert loaded.dumps() == a
    assert [p.id for p in loaded.profiles] == [p.id for p in Manifest(profiles).profiles]
    assert path.read_text().startswith("schema_version: '1.0'\nprofiles:\n- id: ")


def test_a_tampered_manifest_is_refused(tmp_path):
    text = Manifest([_profile()]).dumps()
    with pytest.raises(ManifestError, match="does not match the profile's content"):
        parse_manifest(text.replace("precision: fp16", "precision: fp8"), "m.yaml")
    digest = _profile().files["model.plan"].digest
    with pytest.raises(ManifestError, match="does not match"):
        parse_manifest(text.replace(digest, "sha256:" + "0" * 64), "m.yaml")


@pytest.mark.parametrize("text,message", [
    ("profiles: [\n", "not valid YAML"),
    ("- a\n- b\n", "not a profiles manifest"),
    ("schema_version: '9.0'\nprofiles: []\n", "unsupported schema_version"),
    ("schema_version: '1.0'\nprofiles: {}\n", "must be a list"),
    ("schema_version: '1.0'\nprofiles:\n- {id: x, model: m, release: r, workspace: {files: {}}}\n", "missing 'tags'"),
    ("schema_version: '1.0'\nprofiles:\n- {id: x, model: m, release: r, tags: {}, workspace: {files: {}}}\n",
     "non-empty mapping"),
    ("schema_version: '1.0'\nprofiles:\n- {id: x, model: m, release: r, tags: {a: b}, workspace: {}}\n",
     "workspace.files"),
    ("schema_version: '1.0'\nprofiles:\n- {id: x, model: m, release: r, tags: {a: b}, workspace: {files: "
     "{'../evil': {uri: u, digest: 'sha256:" + "0" * 64 + "', size: 1}}}}\n", "stay inside the workspace"),
    ("schema_version: '1.0'\nprofiles:\n- {id: x, model: m, release: r, tags: {a: b}, workspace: {files: "
     "{f: {uri: u, digest: 'md5:1', size: 1}}}}\n", "malformed digest"),
])
def test_malformed_manifests_get_one_clear_error(text, message):
    with pytest.raises(ManifestError, match=message):
        parse_manifest(text, "m.yaml")


def test_merge_dedupes_identical_profiles_and_is_order_independent():
    a, b, c = _profile("fp16"), _profile("fp8", cc="9.0"), _profile("fp16", cc="8.0")
    one = merge_manifests([("x", Manifest([a, b])), ("y", Manifest([b, c]))])
    two = merge_manifests([("y", Manifest([c, b])), ("x", Manifest([b, a]))])
    assert one.dumps() == two.dumps()
    assert len(one.profiles) == 3


def test_merge_refuses_same_id_with_different_content():
    a = _profile()
    changed = Profile.create(a.model, a.release, a.tags, a.files, requires={"min_compute_capability": "9.0"})
    assert changed.id == a.id
    with pytest.raises(ManifestError, match=r"conflict: profile .* differs between x and y"):
        merge_manifests([("x", Manifest([a])), ("y", Manifest([changed]))])


def test_descriptions_must_be_unique_within_a_model():
    a = _profile(content=b"one")
    b = _profile(content=b"two")  # same tags, different files: same description, different id
    with pytest.raises(ManifestError, match="share the description"):
        Manifest([a, b])


def test_rebase_keeps_relative_uris_pointing_at_the_same_files(tmp_path):
    p = _profile()
    registry = WorkspaceFile("oci://127.0.0.1:5000/acme/minilm-embed@sha256:" + "1" * 64, p.files["model.plan"].digest, 6)
    q = Profile.create(p.model, p.release, {**p.tags, "precision": "fp8"}, {"model.plan": registry})
    moved = Manifest([p, q]).rebased(tmp_path / "cells" / "a", tmp_path)
    uris = {m.tags["precision"]: m.files["model.plan"].uri for m in moved.profiles}
    assert uris["fp16"] == "cells/a/p/model.plan"
    assert uris["fp8"] == registry.uri


def test_shared_records_are_written_out_not_aliased():
    shared = {"run": True, "cosine_min": "0.98"}
    profiles = [Profile.create("m", "0.1.0", {"backend": "tensorrt_rtx", "precision": "fp8", "compute_capability": cc},
                               {"model.plan": _file(cc.encode(), f"p{cc}/model.plan")}, build={"gate": shared})
                for cc in ("8.9", "12.0")]
    text = Manifest(profiles).dumps()
    assert "&id" not in text and "*id" not in text and text.count("cosine_min: '0.98'") == 2


@given(st.text(), st.text(), st.dictionaries(st.text(), st.text(), max_size=6),
       st.dictionaries(st.text(min_size=1), st.just("sha256:" + "c" * 64), max_size=4))
@settings(max_examples=300, deadline=None)
def test_orjson_writes_the_canonical_bytes_json_does(model, release, tags, files):
    """profile_id takes orjson where it is installed: the id a build wrote with json must be the id
    a reader recomputes with orjson, for any text (sort order, escapes, astral characters)."""
    import orjson

    value = {"model": model, "release": release, "tags": tags, "files": files}
    try:
        by_json = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: refused by both (profile_id falls back to json's refusal)
        with pytest.raises(orjson.JSONEncodeError):
            orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        return
    assert orjson.dumps(value, option=orjson.OPT_SORT_KEYS) == by_json


def _saved(tmp_path, *profiles):
    path = tmp_path / "profiles.yaml"
    Manifest(list(profiles)).save(path)
    return path


def test_the_json_twin_holds_what_the_yaml_does_and_is_read_instead(tmp_path):
    from nimbuild.profiles.index import index_path
    from nimbuild.profiles.nim import read_profiles
    from nimbuild.util.yamlsafe import load_yaml

    path = _saved(tmp_path, _profile(), _profile(precision="int8"))
    twin = json.loads(index_path(path).read_text())
    assert index_path(path).name == "profiles.index.json"
    assert twin["document"] == load_yaml(path.read_text())[0]
    # read instead of the YAML: a twin naming the YAML's digest with another (well-formed) manifest wins
    other = Manifest([_profile(precision="fp8")]).document()
    index_path(path).write_text(json.dumps({**twin, "document": other}))
    assert [p.tags["precision"] for p in load_manifest(path).profiles] == ["fp8"]
    assert [p.tags["precision"] for p in read_profiles(path).profiles] == ["fp8"]


@pytest.mark.parametrize("spoil", ["stale", "corrupt", "truncated", "other format"])
def test_a_twin_that_is_not_the_yamls_own_is_ignored(tmp_path, spoil):
    from nimbuild.profiles.index import index_path

    path = _saved(tmp_path, _profile(), _profile(precision="int8"))
    twin_path = index_path(path)
    twin = json.loads(twin_path.read_text())
    if spoil == "stale":  # the YAML edited by hand after the twin was written
        path.write_text(Manifest([_profile(precision="bf16")]).dumps())
    elif spoil == "corrupt":
        twin_path.write_bytes(b"\xff{not json")
    elif spoil == "truncated":
        twin_path.write_text(twin_path.read_text()[:100])
    else:
        twin_path.write_text(json.dumps({**twin, "format": "something-else/9", "document": None}))
    expected = ["bf16"] if spoil == "stale" else ["fp16", "int8"]
    assert sorted(p.tags["precision"] for p in load_manifest(path).profiles) == expected


def test_a_forged_twin_passes_the_checks_the_yaml_would(tmp_path):
    """A twin is trusted with nothing the YAML is not: a climbing uri or a wrong id in it is refused."""
    from nimbuild.profiles.index import index_path
    from nimbuild.profiles.nim import read_profiles

    path = _saved(tmp_path, _profile())
    twin = json.loads(index_path(path).read_text())
    twin["document"]["profiles"][0]["workspace"]["files"]["model.plan"]["uri"] = "../../etc/shadow"
    index_path(path).write_text(json.dumps(twin))
    with pytest.raises(ManifestError, match="stay inside"):
        read_profiles(path)
    twin["document"]["profiles"][0]["workspace"]["files"]["model.plan"]["uri"] = "p/model.plan"
    twin["document"]["profiles"][0]["tags"]["precision"] = "fp8"
    index_path(path).write_text(json.dumps(twin))
    with pytest.raises(ManifestError, match="does not match the profile's content"):
        load_manifest(path)
