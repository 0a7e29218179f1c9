"""Property-based tests (hypothesis) of every reader that takes untrusted bytes: recipes, every
manifest shape, system files, RMIR archives and their rmir.yaml, .nemo archives, and the OCI index
and manifests a registry serves. Inputs are generated, mostly by mutating a real one (so that they
get past the first check and reach the deep ones), some from nothing.

The property, for each: a NimbuildError whose message is one line, or a correct result (a parsed
manifest writes back to itself); never another exception, never a file written outside the
target, and every example within a deadline. `make test` runs EXAMPLES of each; `make fuzz`
(NIMBUILD_FUZZ=1) many more. A case a run found is kept below as an @example."""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers.paths import REPO
from nimbuild.errors import NimbuildError

EXAMPLES = 5000 if os.environ.get("NIMBUILD_FUZZ") else 200
settings.register_profile("nimbuild", max_examples=EXAMPLES, deadline=5000, derandomize=not os.environ.get("NIMBUILD_FUZZ"),
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("nimbuild")

H = "a" * 64
DIGEST = "sha256:" + "b" * 64

# JSON-shaped values of every kind, for fields a mutation replaces
scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=40)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                              max_size=4), max_leaves=12)


def judged(call: Callable[[], Any], each_line: str | None = None) -> Any:
    """call(), which may refuse with a NimbuildError of one line, and nothing else. A recipe's
    refusal lists each problem on a line of its own, as compilers do: `each_line` is how every
    line of such a message starts."""
    try:
        return call()
    except NimbuildError as e:
        lines = str(e).strip().splitlines()
        assert lines and all(lines), f"{type(e).__name__} with an empty line: {str(e)!r}"
        if each_line is None:
            assert len(lines) == 1, f"{type(e).__name__} of several lines: {str(e)!r}"
        else:
            assert all(line.startswith((each_line, "... and ")) for line in lines), str(e)
        return None


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON-shaped value (keys and list indices)."""
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, prefix + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += _paths(value, prefix + (index,))
    return found


def _set(data: Any, path: tuple, value: Any, delete: bool) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    copy = dict(data) if isinstance(data, dict) else list(data)
    if delete and not rest:
        del copy[head]
    else:
        copy[head] = _set(copy[head], rest, value, delete)
    return copy


@st.composite
def mutated(draw, base: Any, most: int = 3) -> Any:
    """`base` with up to `most` of its values replaced by any JSON value, or deleted."""
    data = base
    for _ in range(draw(st.integers(1, most))):
        path = draw(st.sampled_from(_paths(data)))
        data = _set(data, path, draw(values), delete=bool(path) and draw(st.booleans()))
    return data


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# --- manifests ----------------------------------------------------------------------------------

def _nimbuild_manifest() -> dict:
    from nimbuild.profiles.manifest import Manifest, Profile, WorkspaceFile

    profiles = [Profile.create("m", "1.0", {"backend": "onnxruntime", "precision": p},
                               {"model.onnx": WorkspaceFile(f"{p}/model.onnx", DIGEST, 4)}, requires={"gpus": 0})
                for p in ("fp16", "fp32")]
    return yaml.safe_load(Manifest(profiles).dumps())


NIMBUILD_MANIFEST = _nimbuild_manifest()
NIM_V2 = {"schema_version": "2.0.0", "profiles": [
    {"id": H, "tags": {"llm_engine": "tensorrt_llm", "precision": "fp8", "gpu": "H100", "tp": "1"},
     "workspace": {"files": {"rank0.engine": {"uri": "ngc://org/team/m:1.0/rank0.engine", "checksum": "c" * 64,
                                              "size": 9}}}}]}
NIM_V1 = {H: {"model": "m", "release": "1.0", "tags": {"feat_lora": "false", "gpu": "L40S", "gpu_device": "26b5:10de"},
              "workspace": {"components": [{"dst": "", "src": {"repo_id": "ngc://org/m:1.0"}}]}}}


def _listed_and_selected(text: str) -> None:
    """The listing's reader, then selection on a machine with one GPU, as nim_list_model_profiles does."""
    from nimbuild.profiles.nim import parse_profiles
    from nimbuild.profiles.select import select_profile
    from nimbuild.profiles.system import system_from_dict

    read = parse_profiles(text)
    system = system_from_dict({"gpus": [{"name": "NVIDIA L40S", "compute_capability": "8.9", "memory_mib": 46068}]})
    select_profile(read.profiles, system, {})


@given(mutated(NIMBUILD_MANIFEST) | mutated(NIM_V2) | mutated(NIM_V1))
@example({**NIM_V2, "profiles": [{**NIM_V2["profiles"][0], "workspace": {"files": {"x": {"uri": "/etc/passwd",
                                                                                          "checksum": H}}}}]})
def test_every_manifest_shape_is_read_or_refused_in_one_line(data):
    judged(lambda: _listed_and_selected(_dump(data)))


@given(mutated(NIMBUILD_MANIFEST, most=2))
def test_a_nimbuild_manifest_that_is_read_writes_back_to_itself(data):
    from nimbuild.profiles.manifest import parse_manifest

    manifest = judged(lambda: parse_manifest(_dump(data)))
    if manifest is not None:
        assert parse_manifest(manifest.dumps()).dumps() == manifest.dumps()
        _the_twin_holds_what_the_yaml_does(manifest)


def _the_twin_holds_what_the_yaml_does(manifest) -> None:
    """The JSON twin save writes is the YAML's own value (any build record or tag it holds), so a
    reader that takes the twin sees what one parsing the YAML would."""
    from nimbuild.profiles.index import index_path
    from nimbuild.util.yamlsafe import load_yaml

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "profiles.yaml"
        manifest.save(path)
        twin = json.loads(index_path(path).read_text())["document"]
        assert json.dumps(twin) == json.dumps(load_yaml(path.read_text())[0])  # as text: NaN is NaN, order counts


@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_manifest_text_from_nothing_is_read_or_refused(text):
    judged(lambda: _listed_and_selected(text))


# --- system files -------------------------------------------------------------------------------

SYSTEM = {"gpus": [{"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "memory_mib": 81559, "index": 0,
                    "pci_device_id": "2330:10de"}], "driver": "550.54", "runtimes": {"tensorrt": "10.13.0"}}


@given(mutated(SYSTEM) | values)
def test_a_system_file_is_read_or_refused_and_selection_takes_what_is_read(data):
    from nimbuild.profiles.manifest import manifest_from_data
    from nimbuild.profiles.select import select_profile
    from nimbuild.profiles.system import load_system_file

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "system.json"
        path.write_text(json.dumps(data))
        system = judged(lambda: load_system_file(path))
    if system is not None:
        judged(lambda: select_profile(manifest_from_data(NIMBUILD_MANIFEST).profiles, system, {}))


# --- recipes ------------------------------------------------------------------------------------

RECIPE = yaml.safe_load((REPO / "examples" / "minilm-embed" / "recipe.yaml").read_text())


@given(mutated(RECIPE))
def test_a_recipe_is_read_or_refused_in_one_line(data):
    from nimbuild.recipe import parse_recipe

    recipe = judged(lambda: parse_recipe(_dump(data), "r.yaml", REPO / "examples" / "minilm-embed"), each_line="r.yaml:")
    if recipe is not None:  # what compile asks of a recipe it read, before any work
        for target in recipe.targets:
            for precision in target.precisions:
                recipe.precision_spec(precision)


# --- archives -----------------------------------------------------------------------------------

KINDS = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
         "fifo": tarfile.FIFOTYPE, "chardev": tarfile.CHRTYPE}
names = st.sampled_from(["rmir.yaml", "model_config.yaml", "model.onnx", "a/b.bin", "../evil", "/etc/evil", "a/../../evil",
                         "./model_config.yaml", "x" * 300, "dir/", "", "a\\b", "."]) | st.text(max_size=20)
members = st.lists(st.tuples(names, st.sampled_from(sorted(KINDS)), st.binary(max_size=64),
                             st.sampled_from(["", "target", "../../etc/passwd", "/etc/passwd"])), max_size=6)


def _archive(entries, first: tuple[str, bytes] | None, cut: int | None) -> bytes:
    """A tar from generated members (`first`, a real config, ahead of them); the bytes cut at
    `cut` when given, so that a header may claim more than follows it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        if first:
            info = tarfile.TarInfo(first[0])
            info.size = len(first[1])
            tar.addfile(info, io.BytesIO(first[1]))
        for name, kind, data, link in entries:
            info = tarfile.TarInfo(name)
            info.type = KINDS[kind]
            info.linkname = link
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    data = buffer.getvalue()
    return data[:cut] if cut is not None else data


def _unchanged_outside(root: Path, work: Callable[[], Any]) -> Any:
    """work(), checking that nothing in `root` changed but its `target` folder."""
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    result = work()
    after = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.relative_to(root).as_posix()
                   .startswith("target"))
    assert [p for p in after if p not in before] == [], "written outside the target"
    return result


RMIR_META = {"format_version": 1, "min_compute_capability": "7.5", "precision": "fp16",
             "inputs": {"input_ids": {"batch": [1, 8, 64], "sequence": [1, 128, 512]}}}


@given(members, mutated(RMIR_META), st.none() | st.integers(0, 4096))
def test_an_rmir_archive_is_unpacked_inside_its_target_or_refused(entries, meta, cut):
    from nimbuild.targets.rmir import unpack

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        archive = root / "model.rmir"
        archive.write_bytes(_archive(entries, ("rmir.yaml", _dump(meta).encode()), cut))
        _unchanged_outside(root, lambda: judged(lambda: unpack(archive, root / "target")))


@given(members, values, st.none() | st.integers(0, 4096))
def test_a_nemo_archive_is_read_or_refused(entries, config, cut):
    from nimbuild.sources.nemo import check_targets, read_config

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        archive = root / "model.nemo"
        archive.write_bytes(_archive(entries, ("./model_config.yaml", _dump(config).encode()), cut))

        def inspect():
            read = read_config(archive)
            check_targets(read, archive)
            return read

        _unchanged_outside(root, lambda: judged(inspect))


# --- what a registry serves ---------------------------------------------------------------------

def _layout_with(root: Path, index: Any, wrapper: Any | None, manifest_text: str | None) -> str:
    """An OCI image layout whose tag `1.0` of model `m` is `index`, with `wrapper` (profiles.yaml's
    manifest) and `manifest_text` as blobs it may point at."""
    from nimbuild.registry.artifacts import digest_of
    from nimbuild.registry.layout import LayoutStore

    store = LayoutStore(root / "layout", create=True)
    for body in filter(None, [manifest_text.encode() if manifest_text is not None else None,
                              json.dumps(wrapper).encode() if wrapper is not None else None]):
        store.put_bytes("m", digest_of(body), body)
    body = json.dumps(index).encode()
    store.push_manifest("m", "1.0", body, "application/vnd.oci.image.index.v1+json")
    return str(root / "layout")


def _release_shapes():
    """A release as publish writes it: index -> profiles.yaml's manifest -> profiles.yaml."""
    from nimbuild.registry.artifacts import MANIFEST_TYPE, TITLE, digest_of

    text = _dump(NIMBUILD_MANIFEST)
    wrapper = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
               "artifactType": MANIFEST_TYPE,
               "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": DIGEST, "size": 2},
               "layers": [{"mediaType": "application/yaml", "digest": digest_of(text.encode()), "size": len(text),
                           "annotations": {TITLE: "profiles.yaml"}}]}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                            "digest": digest_of(json.dumps(wrapper).encode()), "size": len(json.dumps(wrapper)),
                            "artifactType": MANIFEST_TYPE, "annotations": {TITLE: "profiles.yaml"}}]}
    return index, wrapper, text


INDEX, WRAPPER, RELEASE_TEXT = _release_shapes()


@given(mutated(INDEX) | values, st.none() | mutated(WRAPPER), st.none() | st.just(RELEASE_TEXT))
@example({"schemaVersion": 2, "manifests": "not a list"}, None, None)
@example({"schemaVersion": 2, "manifests": [7]}, None, None)
def test_a_release_index_and_manifests_from_a_registry_are_read_or_refused(index, wrapper, text):
    from nimbuild.registry import published_profiles
    from nimbuild.registry.cache import BlobCache

    with tempfile.TemporaryDirectory() as tmp:
        layout = _layout_with(Path(tmp), index, wrapper, text)
        judged(lambda: published_profiles("m:1.0", layout, BlobCache(Path(tmp) / "cache")))
