"""NIM's cache commands on nimbuild's registry and cache: download-to-cache, then the air-gapped start
NIM documents (download while connected; start with no registry reachable); and the manifest
exported as NIM v2 and read back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import httpx
import pytest

from nimbuild.profiles.manifest import load_manifest
from nimbuild.profiles.nim import parse_profiles
from nimbuild.util.progress import Reporter

FP32 = "onnxruntime-fp32-throughput"


def _download(manifest, cache, *args):
    return subprocess.run([sys.executable, "-m", "runtime_min", "download-to-cache", "-m", str(manifest), *args],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "NIM_CACHE_PATH": str(cache)})


def test_download_to_cache_then_serve_with_the_registry_gone(minilm_compiled, tmp_path):
    from helpers.runtime import Runtime
    from helpers.servers import Registry
    from nimbuild.registry import publish

    out, _ = minilm_compiled
    server = Registry(tmp_path / "registry")
    registry = f"oci://{server.host}/nim"
    try:
        publish(out, registry, Reporter(quiet=True))
        # the manifest alone, as a NIM container carries it: its files are in the registry, not beside it
        container = tmp_path / "container"
        container.mkdir()
        manifest = container / "model_manifest.yaml"
        shutil.copy(out / "profiles.yaml", manifest)
        cache = tmp_path / "cache"
        first = _download(manifest, cache, "--registry", registry, "--profile", FP32)
        assert first.returncode == 0, first.stderr
        (line,) = first.stdout.splitlines()
        assert f"({FP32}): downloaded" in line
    finally:
        server.stop()
    # the registry is gone: the profile is already there, and anything else says so in one line
    again = _download(manifest, cache, "--registry", registry, "--profile", FP32)
    assert again.returncode == 0 and "already in the cache" in again.stdout
    missing = _download(manifest, cache, "--registry", registry, "--profile", "onnxruntime-fp16-throughput")
    assert missing.returncode != 0 and missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr
    assert _download(manifest, cache, "--profile", "onnxruntime-fp16-throughput").stderr.strip() == \
        f"error: profile onnxruntime-fp16-throughput is not in the cache {cache}; pass --registry to download it"
    runtime = Runtime(manifest, cache, registry=registry, env={"NIM_MODEL_PROFILE": FP32})
    try:
        runtime.wait_ready(120)
        reply = httpx.post(f"{runtime.url}/v1/embeddings", json={"model": "minilm-embed", "input": ["offline"]}, timeout=60)
        assert reply.status_code == 200 and len(reply.json()["data"][0]["embedding"]) == 384
        assert "found in the cache" in runtime.log.read_text()
    finally:
        assert runtime.stop() == 0


def test_export_as_nim_v2_reads_back_the_same_profiles(minilm_compiled, tmp_path):
    out, _ = minilm_compiled
    target = tmp_path / "model_manifest.yaml"
    result = subprocess.run([sys.executable, "-m", "nimbuild", "profiles", "export", "--format", "nim-v2",
                             "-m", str(out / "profiles.yaml"), "--out", str(target)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    ours = load_manifest(out / "profiles.yaml").profiles
    read = parse_profiles(target.read_text())
    assert read.format == "nim-v2" and read.details == {"profile_selection_criteria": "default"}
    assert [(p.id, p.model, p.release, p.description, p.tags, p.files, p.requires) for p in read.profiles] == \
        [(p.id, p.model, p.release, p.description, p.tags, p.files, p.requires) for p in ours]


@pytest.mark.parametrize("args, message", [(["--all", "--profile", "x"], "--all and --profile")])
def test_download_to_cache_refuses_contradictions(minilm_compiled, tmp_path, args, message):
    out, _ = minilm_compiled
    result = _download(out / "profiles.yaml", tmp_path / "cache", *args)
    assert result.returncode != 0 and message in result.stderr


def test_pods_sharing_one_cache_download_each_blob_once_and_all_succeed(minilm_compiled, tmp_path):
    """The RWX PVC case: several download-to-cache at once into one cache, the registry named only by
    the manifest's URIs. Each blob crosses the network once (the registry's access log), every process
    succeeds with the same workspaces, and nothing partial is left."""
    from helpers.servers import Registry
    from nimbuild.profiles.nim import nim_v2_text
    from nimbuild.registry import publish, published_profiles
    from nimbuild.util.files import file_matches

    out, _ = minilm_compiled
    server = Registry(tmp_path / "registry", access_log=True)
    try:
        registry = f"oci://{server.host}/nim"
        publish(out, registry, Reporter(quiet=True))
        baked = tmp_path / "model_manifest.yaml"
        baked.write_text(nim_v2_text(published_profiles("minilm-embed:0.1.0", registry)))
        cache = tmp_path / "cache"
        env = {**os.environ, "NIM_CACHE_PATH": str(cache)}
        args = [sys.executable, "-m", "runtime_min", "download-to-cache", "-m", str(baked),
                "--profiles", FP32, "onnxruntime-fp16-throughput", "onnxruntime-int8-throughput"]
        jobs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(4)]
        results = [(job.wait(timeout=300), *job.communicate()) for job in jobs]
        gets = server.blob_gets()
    finally:
        server.stop()
    assert [code for code, _, _ in results] == [0] * 4, [err for _, _, err in results]
    assert len({stdout.replace("already in the cache", "downloaded") for _, stdout, _ in results}) == 1
    wanted = {f.digest: f.size for p in load_manifest(out / "profiles.yaml").profiles
              if p.description in (FP32, "onnxruntime-fp16-throughput", "onnxruntime-int8-throughput")
              for f in p.files.values()}
    assert {d: gets.get(d) for d in wanted} == {d: 1 for d in wanted}
    assert all(file_matches(cache / "blobs/sha256" / d.split(":")[1], d, size) for d, size in wanted.items())
    assert not any((cache / "partial").iterdir())
    assert not [p for p in cache.rglob("*.tmp")]  # no staged name is left behind


def test_download_to_cache_takes_the_operators_profiles_list_and_the_registry_from_the_environment(
        minilm_compiled, tmp_path):
    """`--profiles A B` as the caching Job passes it, and $NIMBUILD_REGISTRY for a manifest whose files
    are named relative to it (a compile's output), where no URI names a registry."""
    from nimbuild.registry import publish

    out, _ = minilm_compiled
    registry = tmp_path / "layout"
    publish(out, str(registry), Reporter(quiet=True))
    container = tmp_path / "container"
    container.mkdir()
    shutil.copy(out / "profiles.yaml", container / "model_manifest.yaml")
    env = {**os.environ, "NIM_CACHE_PATH": str(tmp_path / "cache"), "NIMBUILD_REGISTRY": str(registry)}
    result = subprocess.run([sys.executable, "-m", "runtime_min", "download-to-cache", "-m",
                             str(container / "model_manifest.yaml"), "--profiles", FP32, "onnxruntime-fp16-throughput"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines()] == [f"({FP32}):", "(onnxruntime-fp16-throughput):"]


def test_the_registry_is_the_one_given_else_the_environments_else_the_one_the_files_name(monkeypatch):
    """A mirror (air-gapped) wins over the registry a baked manifest names; files named relative to
    their manifest name none."""
    from nimbuild.errors import RegistryError
    from nimbuild.profiles.manifest import Profile, WorkspaceFile
    from runtime_min.service import registry_for

    digest = "sha256:" + "0" * 64
    baked = Profile.create("m", "1", {"backend": "onnxruntime"},
                           {"model.onnx": WorkspaceFile(f"oci://src.example/acme/m@{digest}", digest, 1)})
    monkeypatch.delenv("NIMBUILD_REGISTRY", raising=False)
    assert registry_for(baked, None) == "oci://src.example/acme"
    monkeypatch.setenv("NIMBUILD_REGISTRY", "oci://mirror.example/acme")
    assert registry_for(baked, None) == "oci://mirror.example/acme"
    assert registry_for(baked, "./layout") == "./layout"
    monkeypatch.delenv("NIMBUILD_REGISTRY")
    local = Profile.create("m", "1", {"backend": "onnxruntime"},
                           {"model.onnx": WorkspaceFile("profiles/x/model.onnx", digest, 1)})
    assert registry_for(local, None) is None
    mixed = Profile.create("m", "1", {"backend": "onnxruntime"}, {
        "a": WorkspaceFile(f"oci://one.example/ns/m@{digest}", digest, 1),
        "b": WorkspaceFile(f"oci://two.example/ns/m@{digest}", digest, 1)})
    with pytest.raises(RegistryError, match="its files name 2 registries"):
        registry_for(mixed, None)
