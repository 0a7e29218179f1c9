"""The hostile corpus: malformed manifests of every shape, selectors, system files, recipes, RMIR
metadata, matrix cell records and paths that are files, each through the real command a user runs.
Every one must end in under 2 seconds with exit 2, one line on stderr, no traceback, and nothing
stored changed. (YAML itself: test_yaml.py; archives: test_engines.py; requests: test_runtime.py,
test_llm.py, test_asr.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from helpers.paths import REPO, VENV_BIN
from nimbuild.profiles.manifest import Manifest, Profile, WorkspaceFile

H = "a" * 64  # a well-formed profile id or digest
DIGEST = "sha256:" + "b" * 64


def _v2(entry: str) -> str:
    return "schema_version: '2.0.0'\nprofiles:\n" + entry


def _v2_file(files: str, id_: str = H) -> str:
    return _v2(f"- id: {id_}\n  tags: {{backend: onnxruntime}}\n  workspace:\n    files:\n      {files}\n")


MANIFESTS = {
    "v2 duplicate ids": (_v2(f"- {{id: {H}, tags: {{backend: a}}}}\n- {{id: {H}, tags: {{backend: b}}}}\n"), "appears twice"),
    "v1 duplicate ids": (f"{H}:\n  tags: {{backend: a}}\n{H}:\n  tags: {{backend: b}}\n", "duplicate key"),
    "v2 id not hex": (_v2("- {id: not-a-sha256, tags: {backend: a}}\n"), "not 64 lowercase hex"),
    "v1 id too short": ("abc123:\n  tags: {backend: a}\n", "not 64 lowercase hex"),
    "v2 checksum not hex": (_v2_file("m.onnx: {uri: 'ngc://x', checksum: 'zz12'}"), "malformed digest"),
    "v2 checksum too short": (_v2_file(f"m.onnx: {{uri: 'ngc://x', checksum: '{H[:40]}'}}"), "malformed digest"),
    "v2 negative size": (_v2_file(f"m.onnx: {{uri: 'ngc://x', checksum: '{H}', size: -5}}"), "has size -5"),
    "v2 size a word": (_v2_file(f"m.onnx: {{uri: 'ngc://x', checksum: '{H}', size: big}}"), "has size 'big'"),
    "v2 absolute path": (_v2_file(f"/etc/passwd: {{uri: 'ngc://x', checksum: '{H}'}}"), "must be relative"),
    "v2 climbing path": (_v2_file(f"../../x: {{uri: 'ngc://x', checksum: '{H}'}}"), "must be relative"),
    "v2 absolute uri": (_v2_file(f"m.onnx: {{uri: '/etc/passwd', checksum: '{H}'}}"), "a local uri must be relative"),
    "v2 climbing uri": (_v2_file(f"m.onnx: {{uri: 'a/../../etc/passwd', checksum: '{H}'}}"), "stay inside it"),
    "v2 tag a list": (_v2(f"- {{id: {H}, tags: {{backend: a, precision: [fp16, fp32]}}}}\n"), "has a list value"),
    "v2 tag a mapping": (_v2(f"- {{id: {H}, tags: {{backend: a, precision: {{x: 1}}}}}}\n"), "has a dict value"),
    "v1 tag without value": (f"{H}:\n  tags: {{backend: }}\n", "has no value"),
}


@pytest.fixture(scope="module")
def manifest_text(tmp_path_factory) -> str:
    """A real nimbuild manifest of two profiles (what compile writes), to corrupt."""
    root = tmp_path_factory.mktemp("workspace")
    profiles = []
    for precision in ("fp16", "fp32"):
        (root / precision).mkdir()
        (root / precision / "model.onnx").write_bytes(precision.encode())
        files = {"model.onnx": WorkspaceFile(f"{precision}/model.onnx", DIGEST, 4)}
        profiles.append(Profile.create("m", "1.0", {"backend": "onnxruntime", "precision": precision}, files))
    return Manifest(profiles).dumps()


def _nimbuild_variants(text: str) -> dict[str, tuple[str, str]]:
    first = text.index("- id:")
    second = text.index("- id:", first + 1)
    return {
        "nimbuild duplicate profile": (text[:second] + text[first:second] + text[second:], "appears twice"),
        "nimbuild size a word": (text.replace("size: 4", "size: lots", 1), "has size 'lots'"),
        "nimbuild negative size": (text.replace("size: 4", "size: -1", 1), "has size -1"),
        "nimbuild climbing path": (text.replace("      model.onnx:", "      ../model.onnx:", 1), "must be relative"),
        "nimbuild absolute uri": (text.replace("uri: fp16/model.onnx", "uri: /etc/passwd", 1), "a local uri must be"),
        "nimbuild climbing uri": (text.replace("uri: fp16/model.onnx", "uri: ../../fp16/model.onnx", 1), "stay inside"),
        "nimbuild tag a list": (text.replace("precision: fp16", "precision: [fp16]", 1), "has a list value"),
        "nimbuild digest short": (text.replace(DIGEST, "sha256:abc", 1), "malformed digest"),
    }


def _run(exe: str, *args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    started = time.monotonic()
    result = subprocess.run([str(VENV_BIN / exe), *args], capture_output=True, text=True, timeout=30, cwd=cwd,
                            env={**os.environ, **(env or {})})
    result.seconds = time.monotonic() - started
    return result


def _refused(result: subprocess.CompletedProcess, fragment: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert result.seconds < 2, f"{result.seconds:.1f} s"


def test_every_malformed_manifest_is_refused_by_listing_and_selection(tmp_path, manifest_text):
    cases = {**MANIFESTS, **_nimbuild_variants(manifest_text)}
    assert _run("nim_list_model_profiles", "-m", _write(tmp_path / "good.yaml", manifest_text)).returncode == 0
    for name, (text, fragment) in cases.items():
        path = _write(tmp_path / "m.yaml", text)
        for exe, args in (("nim_list_model_profiles", ["-m", path]), ("nimbuild", ["profiles", "select", "-m", path])):
            try:
                _refused(_run(exe, *args, env={"NIMBUILD_SYSTEM": _write(tmp_path / "s.json", '{"gpus": []}')}),
                         fragment)
            except AssertionError as e:
                raise AssertionError(f"{name} through {exe}: {e}") from None


@pytest.mark.parametrize("selector", ["a=", "a==b", ",,,", "=b", "precision=fp16,,backend=x"])
def test_malformed_selectors_are_refused(tmp_path, manifest_text, selector):
    path = _write(tmp_path / "m.yaml", manifest_text)
    _refused(_run("nim_list_model_profiles", "-m", path, env={"NIM_TAGS_SELECTOR": selector}), "is not key=value")


@pytest.mark.parametrize("gpu,fragment", [
    ({"product": "L40S", "memory_mib": "lots"}, "memory_mib must be a whole number"),
    ({"product": "L40S", "memory_mib": -5}, "memory_mib must be a whole number"),
    ({"product": {"name": "L40S"}}, "product must be a string"),
    ({"name": "X", "compute_capability": "99999999999999999999.0", "memory_mib": 1}, "compute_capability must look like"),
    ({"name": "X", "compute_capability": [8, 9], "memory_mib": 1}, "compute_capability must look like"),
    ({"product": "L40S", "index": True}, "index must be a whole number"),
])
def test_system_files_with_fields_of_the_wrong_type_are_refused(tmp_path, manifest_text, gpu, fragment):
    system = _write(tmp_path / "system.json", json.dumps({"gpus": [gpu]}))
    path = _write(tmp_path / "m.yaml", manifest_text)
    _refused(_run("nim_list_model_profiles", "-m", path, env={"NIMBUILD_SYSTEM": system}), fragment)


@pytest.mark.parametrize("system,fragment", [
    ({"gpus": [], "driver": {"version": "550.54"}}, "driver must be a string, got dict"),
    ({"gpus": [], "driver": 550}, "driver must be a string, got int"),
    ({"gpus": [], "note": ["no", "gpu"]}, "note must be a string, got list"),
])
def test_system_file_fields_beside_the_gpus_are_typed_too(tmp_path, manifest_text, system, fragment):
    """Issue 31: a JSON object where the driver version belongs was accepted."""
    path = _write(tmp_path / "system.json", json.dumps(system))
    _refused(_run("nim_list_model_profiles", "-m", _write(tmp_path / "m.yaml", manifest_text),
                  env={"NIMBUILD_SYSTEM": path}), fragment)


def test_a_system_file_number_beyond_any_float_is_refused(tmp_path, manifest_text):
    system = _write(tmp_path / "system.json", '{"gpus": [{"product": "L40S", "memory_mib": 1e400}]}')
    _refused(_run("nim_list_model_profiles", "-m", _write(tmp_path / "m.yaml", manifest_text),
                  env={"NIMBUILD_SYSTEM": system}), "memory_mib must be a whole number")


RECIPE = (REPO / "examples" / "minilm-embed" / "recipe.yaml").read_text()


@pytest.mark.parametrize("old,new,fragment", [
    ("sequence: [1, 128, 512]", "sequence: [1, 128, 100000000000000000000000000]", "beyond any model's dimension"),
    ("sequence: [1, 128, 512]", "sequence: [1, 128, 1e26]", "three integers"),
    ("batch: [1, 8, 64]", "batch: [1, 8, 1099511627776]", "beyond any model's dimension"),
    ("atol: 1.0e-4", "atol: .inf", "finite number"),
    ("rtol: 1.0e-3", "rtol: .nan", "finite number"),
    ("cosine_min: 0.999}", "cosine_min: .nan}", "finite number"),
    ("max_batch_size: 64", "max_batch_size: 1099511627776", "less than or equal to 65536"),
    ("max_queue_delay_us: 0", "max_queue_delay_us: 100000000000000", "less than or equal to"),
])
def test_recipes_that_cannot_work_fail_recipe_check(tmp_path, old, new, fragment):
    assert old in RECIPE
    recipe = _write(tmp_path / "r.yaml", RECIPE.replace(old, new, 1))
    _refused(_run("nimbuild", "recipe", "check", recipe), fragment)


def test_no_command_reads_a_file_outside_the_manifests_directory(tmp_path):
    """Issue 31: a file uri that climbed out (or was absolute) was listed, selected, fetched into the
    cache and published, with its digest right: any file on the machine could be read that way."""
    from nimbuild.util.files import sha256_file

    secret = tmp_path / "home" / "secret.onnx"
    secret.parent.mkdir()
    secret.write_bytes(b"not yours")
    digest = "sha256:" + sha256_file(secret)
    cache, registry = tmp_path / "cache", tmp_path / "registry"
    (tmp_path / "ws").mkdir()
    for uri in ("../home/secret.onnx", str(secret)):
        files = {"model.onnx": WorkspaceFile(uri, digest, secret.stat().st_size)}
        text = Manifest([Profile.create("m", "1.0", {"backend": "onnxruntime"}, files)]).dumps()
        manifest = _write(tmp_path / "ws" / "profiles.yaml", text)
        env = {"NIM_CACHE_PATH": str(cache)}
        _refused(_run("python", "-m", "runtime_min", "download-to-cache", "-m", manifest, "--all", env=env),
                 "a local uri must be relative")
        _refused(_run("nimbuild", "publish", manifest, "--registry", str(registry)), "a local uri must be relative")
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))
    assert not registry.exists()


def test_profiles_merge_refuses_to_write_a_manifest_whose_files_lie_outside_it(tmp_path, manifest_text):
    """A merged manifest beside (not above) its inputs would need ../ uris, which every reader refuses:
    merge says so, instead of writing a manifest nothing can read."""
    cell = tmp_path / "cells" / "a"
    cell.mkdir(parents=True)
    _write(cell / "profiles.yaml", manifest_text)
    (tmp_path / "elsewhere").mkdir()
    _refused(_run("nimbuild", "profiles", "merge", str(cell), "--out", str(tmp_path / "elsewhere" / "m.yaml")),
             "write it in a directory that holds every input")
    assert not (tmp_path / "elsewhere" / "m.yaml").exists()
    merged = _run("nimbuild", "profiles", "merge", str(cell), "--out", str(tmp_path / "m.yaml"))
    assert merged.returncode == 0, merged.stderr
    assert "uri: cells/a/fp16/model.onnx" in (tmp_path / "m.yaml").read_text()


def test_paths_that_are_files_are_named_not_crashed_on(tmp_path, manifest_text):
    blocker = tmp_path / "afile"
    blocker.write_text("precious")
    manifest = _write(tmp_path / "m.yaml", manifest_text)
    for registry in (blocker, blocker / "sub"):
        _refused(_run("nimbuild", "publish", manifest, "--registry", str(registry)), "is a file")
    for cache in (blocker, blocker / "sub"):
        _refused(_run("python", "-m", "runtime_min", "serve", "--manifest", manifest, "--port", "1",
                      env={"NIM_CACHE_PATH": str(cache)}), "NIM_CACHE_PATH")
    assert blocker.read_text() == "precious"


@pytest.mark.parametrize("record", ["{not json", "{}", '{"recipe": "m", "release": "1", "plan": "p", "cell": "cpu", '
                                                       '"cells": "cpu", "skipped": []}', "[" * 100_000])
def test_a_broken_cell_record_in_profiles_merge_is_named(tmp_path, manifest_text, record):
    cell = tmp_path / "cell"
    cell.mkdir()
    _write(cell / "profiles.yaml", manifest_text)
    _write(cell / "cell.json", record)
    _refused(_run("nimbuild", "profiles", "merge", str(cell), "--out", str(tmp_path / "merged.yaml")), "cell.json")
    assert not (tmp_path / "merged.yaml").exists()


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("inputs,fragment", [
    ("{input_ids: {batch: [1, 8, abc]}}", "three integers"),
    ("{input_ids: {batch: [1, 128, -5]}}", "1 <= min <= opt <= max"),
    ("{input_ids: 7}", "valid dictionary"),
    ("{input_ids: {batch: [1, 8, 99999999999999999999999]}}", "beyond any model's dimension"),
    ("[]", "valid dictionary"),
])
def test_an_rmir_whose_shapes_are_malformed_is_refused_before_any_build(tmp_path, inputs, fragment):
    import io
    import tarfile

    meta = f"format_version: 1\nmin_compute_capability: '7.5'\nprecision: fp16\ninputs: {inputs}\n".encode()
    archive = tmp_path / "bad.rmir"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("rmir.yaml")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
    cache = tmp_path / "cache"
    _refused(_run("nimbuild", "rmir", "deploy", str(archive), "--target", "8.6", "--cache", str(cache)), fragment)
    assert not any(cache.rglob("*.plan"))
