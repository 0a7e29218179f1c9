"""Publish and pull against a real docker-registry, an OCI layout on disk, and an NGC stand-in."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers.paths import VENV_BIN
from helpers.registry import assert_pulled_exactly, make_release
from helpers.servers import CuttingProxy, Registry, require
from nimbuild.errors import IntegrityError, RegistryError
from nimbuild.profiles.manifest import Manifest, Profile
from nimbuild.registry import list_registry, publish, pull
from nimbuild.registry.cache import BlobCache
from nimbuild.util.progress import Reporter

QUIET = Reporter(quiet=True)


@pytest.fixture
def cache(tmp_path):
    return BlobCache(tmp_path / "cache")


def test_layout_round_trip_and_structure(tmp_path, release, cache):
    out, manifest = release
    registry_dir = tmp_path / "registry"
    report = publish(out, str(registry_dir), QUIET)
    assert report.releases == ["demo:1.0"] and report.blobs_sent == 4  # 5 files, one shared by both profiles
    assert json.loads((registry_dir / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    refs = sorted(m["annotations"]["org.opencontainers.image.ref.name"]
                  for m in json.loads((registry_dir / "index.json").read_text())["manifests"])
    assert refs == sorted(["demo:1.0"] + [f"demo:1.0-{p.id[:12]}{kind}" for p in manifest.profiles
                                          for kind in ("", "-modelpack")])
    result = pull("demo:1.0", registry_dir.as_uri(), QUIET, dest=tmp_path / "dest", cache=cache)
    assert_pulled_exactly(tmp_path / "dest", manifest)
    assert result.blobs_sent == 4 and list_registry(str(registry_dir))["demo"]["releases"] == ["1.0"]


def test_registry_round_trip_into_an_empty_cache(tmp_path, registry, release, cache):
    out, manifest = release
    uri = f"oci://{registry.host}/acme"
    publish(out, uri, QUIET)
    first = pull("demo:1.0", uri, QUIET, dest=tmp_path / "a", cache=cache)
    assert_pulled_exactly(tmp_path / "a", manifest)
    assert first.blobs_sent == 4 and first.bytes_sent == sum({f.digest: f.size for p in manifest.profiles
                                                              for f in p.files.values()}.values())
    again = pull("demo:1.0", uri, QUIET, dest=tmp_path / "b", cache=cache)
    assert again.blobs_sent == 0 and again.blobs_present == 4, "the second pull comes from the cache"
    assert_pulled_exactly(tmp_path / "b", manifest)
    assert list_registry(uri) == {"demo": {"releases": ["1.0"],
                                           "profile_tags": sorted(f"1.0-{p.id[:12]}" for p in manifest.profiles),
                                           "modelpack_tags": sorted(f"1.0-{p.id[:12]}-modelpack"
                                                                    for p in manifest.profiles),
                                           "image_tags": []}}


def test_second_publish_sends_nothing_and_shared_blobs_go_once(tmp_path, registry, release):
    out, manifest = release
    uri = f"oci://{registry.host}/acme"
    first = publish(out, uri, QUIET)
    assert first.blobs_sent == 4 and first.unchanged == []
    second = publish(out, uri, QUIET)
    assert second.blobs_sent == 0 and second.bytes_sent == 0 and second.unchanged == ["demo:1.0"]
    # a new release with the same big graph sends only what changed
    out2 = tmp_path / "out2"
    make_release(out2, release="1.1")
    third = publish(out2, uri, QUIET)
    assert third.blobs_sent == 0, "every file of 1.1 is already in the registry"


def test_a_published_release_is_immutable_unless_forced(tmp_path, registry, release, cache):
    out, _ = release
    uri = f"oci://{registry.host}/acme"
    publish(out, uri, QUIET)
    changed_out = tmp_path / "changed"
    changed = make_release(changed_out, big_seed=2)
    with pytest.raises(RegistryError, match=r"demo:1.0 is already published .* with different profiles .* differ.*--force"):
        publish(changed_out, uri, QUIET)
    assert publish(changed_out, uri, QUIET, force=True).releases == ["demo:1.0"]
    pull("demo:1.0", uri, QUIET, dest=tmp_path / "dest", cache=cache)
    assert_pulled_exactly(tmp_path / "dest", changed)


def test_same_profiles_with_new_provenance_are_the_same_release(tmp_path, registry, release):
    """A rebuild by a newer nimbuild records a new build key, but the profiles (ids, files) are equal."""
    out, manifest = release
    uri = f"oci://{registry.host}/acme"
    publish(out, uri, QUIET)
    before = subprocess.run([require("skopeo"), "inspect", "--raw", "--tls-verify=false",
                             f"docker://{registry.host}/acme/demo:1.0"], capture_output=True, check=True).stdout
    rebuilt = Manifest([Profile(p.id, p.model, p.release, p.description, p.tags, p.files, p.requires,
                                {"key": "sha256:" + "7" * 64, "builder": {"nimbuild": "9.9"}}) for p in manifest.profiles])
    rebuilt.save(out / "profiles.yaml")
    report = publish(out, uri, QUIET)
    assert report.unchanged == ["demo:1.0"] and report.blobs_sent == 0
    after = subprocess.run([require("skopeo"), "inspect", "--raw", "--tls-verify=false",
                            f"docker://{registry.host}/acme/demo:1.0"], capture_output=True, check=True).stdout
    assert after == before, "the published release was left exactly as it was"


def test_registry_copy_of_the_manifest_points_into_the_registry(tmp_path, registry, release, cache):
    out, manifest = release
    uri = f"oci://{registry.host}/acme"
    publish(out, uri, QUIET)
    from nimbuild.registry import _registry_profiles, open_store
    from nimbuild.registry.artifacts import Descriptor, parse_json

    store = open_store(uri)
    index = parse_json(store.get_manifest("acme/demo", "1.0"), "index")
    profiles = _registry_profiles(store, "acme/demo", "demo:1.0", [Descriptor.from_dict(m) for m in index["manifests"]], cache)
    for p in profiles:
        for f in p.files.values():
            assert f.uri == f"{uri}/demo@{f.digest}"
    store.close()


def test_pull_one_profile_or_the_one_this_machine_would_run(tmp_path, registry, release, cache, monkeypatch):
    out, manifest = release
    uri = f"oci://{registry.host}/acme"
    publish(out, uri, QUIET)
    pull("demo:1.0", uri, QUIET, dest=tmp_path / "one", profile="tensorrt-sm90-fp16-throughput", cache=cache)
    assert_pulled_exactly(tmp_path / "one", manifest, only={"tensorrt-sm90-fp16-throughput"})
    system = tmp_path / "cpu.json"
    system.write_text('{"gpus": []}')
    monkeypatch.setenv("NIMBUILD_SYSTEM", str(system))
    chosen = pull("demo:1.0", uri, QUIET, dest=tmp_path / "sel", select=True, cache=cache)
    assert [p.description for p in chosen.profiles] == ["onnxruntime-fp32-throughput"]
    assert_pulled_exactly(tmp_path / "sel", manifest, only={"onnxruntime-fp32-throughput"})


def test_missing_release_and_bad_references(tmp_path, registry, release, cache):
    out, _ = release
    uri = f"oci://{registry.host}/acme"
    publish(out, uri, QUIET)
    with pytest.raises(RegistryError, match=r"demo:9.9 not found in .* \(releases of demo: 1.0\)"):
        pull("demo:9.9", uri, QUIET, cache=cache)
    with pytest.raises(RegistryError, match="expected MODEL:RELEASE"):
        pull("demo", uri, QUIET, cache=cache)
    with pytest.raises(RegistryError, match="unsupported registry"):
        pull("demo:1.0", "s3://bucket/x", QUIET, cache=cache)
    with pytest.raises(RegistryError, match="not an OCI image layout"):
        pull("demo:1.0", str(tmp_path), QUIET, cache=cache)


def test_unreachable_registry_is_one_clear_error(tmp_path, cache):
    from helpers.servers import free_port

    port = free_port()  # nothing listens there
    with pytest.raises(RegistryError, match=rf"127.0.0.1:{port}: .* failed after 5 attempts: ConnectError"):
        pull("demo:1.0", f"oci://127.0.0.1:{port}/acme", QUIET, cache=cache)


def test_basic_auth_with_htpasswd(tmp_path, release, cache, monkeypatch):
    out, manifest = release
    htpasswd = tmp_path / "htpasswd"
    subprocess.run([require("htpasswd"), "-Bbc", str(htpasswd), "builder", "s3cret-pass"], check=True,
                   capture_output=True)
    server = Registry(tmp_path / "auth-registry", htpasswd=htpasswd)
    try:
        uri = f"oci://{server.host}/acme"
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
        with pytest.raises(RegistryError, match="access denied") as denied:
            publish(out, uri, QUIET)
        assert "s3cret" not in str(denied.value)
        monkeypatch.setenv("NIMBUILD_REGISTRY_USERNAME", "builder")
        monkeypatch.setenv("NIMBUILD_REGISTRY_PASSWORD", "wrong")
        with pytest.raises(RegistryError, match="access denied") as wrong:
            publish(out, uri, QUIET)
        assert "wrong" not in str(wrong.value)
        monkeypatch.setenv("NIMBUILD_REGISTRY_PASSWORD", "s3cret-pass")
        assert publish(out, uri, QUIET).blobs_sent == 4
        # Docker's own config file works as well
        monkeypatch.delenv("NIMBUILD_REGISTRY_USERNAME")
        monkeypatch.delenv("NIMBUILD_REGISTRY_PASSWORD")
        docker = tmp_path / "docker"
        docker.mkdir()
        token = base64.b64encode(b"builder:s3cret-pass").decode()
        (docker / "config.json").write_text(json.dumps({"auths": {server.host: {"auth": token}}}))
        monkeypatch.setenv("DOCKER_CONFIG", str(docker))
        pull("demo:1.0", uri, QUIET, dest=tmp_path / "dest", cache=cache)
        assert_pulled_exactly(tmp_path / "dest", manifest)
    finally:
        server.stop()


def test_a_download_cut_mid_stream_resumes(tmp_path, registry, release, cache):
    out, manifest = release
    publish(out, f"oci://{registry.host}/acme", QUIET)
    proxy = CuttingProxy(registry.port, cut_after=5 << 20, direction="download")
    try:
        result = pull("demo:1.0", f"oci://{proxy.host}/acme", QUIET, dest=tmp_path / "dest", cache=cache)
    finally:
        proxy.stop()
    assert proxy.cuts == 1, "the proxy really cut a transfer"
    assert result.blobs_sent == 4
    assert_pulled_exactly(tmp_path / "dest", manifest)
    assert not any((cache.root / "partial").iterdir()), "no partial file is left behind"


def test_an_upload_cut_mid_stream_resumes(tmp_path, registry, release, cache):
    out, manifest = release
    proxy = CuttingProxy(registry.port, cut_after=20 << 20, direction="upload")
    try:
        publish(out, f"oci://{proxy.host}/acme", QUIET)
    finally:
        proxy.stop()
    assert proxy.cuts == 1
    pull("demo:1.0", f"oci://{registry.host}/acme", QUIET, dest=tmp_path / "dest", cache=cache)
    assert_pulled_exactly(tmp_path / "dest", manifest)


def test_a_blob_corrupted_on_the_server_is_refused_and_nothing_is_kept(tmp_path, registry, release, cache):
    out, manifest = release
    publish(out, f"oci://{registry.host}/acme", QUIET)
    vocab = manifest.profiles[0].files["tokenizer/vocab.txt"]
    stored = registry.blob_path(vocab.digest)
    data = bytearray(stored.read_bytes())
    data[100] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"does not match its digest .*nothing was kept"):
        pull("demo:1.0", f"oci://{registry.host}/acme", QUIET, dest=tmp_path / "dest", cache=cache)
    assert not cache.path(vocab.digest).exists()
    assert not (tmp_path / "dest" / "profiles.yaml").exists()
    assert not any((cache.root / "partial").iterdir())


def test_a_corrupt_or_truncated_cached_blob_is_fetched_again(tmp_path, registry, release, cache):
    out, manifest = release
    uri = f"oci://{registry.host}/acme"
    publish(out, uri, QUIET)
    pull("demo:1.0", uri, QUIET, dest=tmp_path / "a", cache=cache)
    graph = manifest.profiles[0].files["model.onnx"]
    cached = cache.path(graph.digest)
    cached.chmod(0o644)
    with open(cached, "r+b") as f:
        f.truncate(1000)
    vocab = cache.path(manifest.profiles[0].files["tokenizer/vocab.txt"].digest)
    vocab.chmod(0o644)
    vocab.write_bytes(b"X" * vocab.stat().st_size)
    result = pull("demo:1.0", uri, QUIET, dest=tmp_path / "b", cache=cache)
    assert result.blobs_sent == 2 and result.blobs_present == 2
    assert_pulled_exactly(tmp_path / "b", manifest)


def test_two_processes_pull_the_same_release_into_one_cache(tmp_path, registry, release):
    out, manifest = release
    uri = f"oci://{registry.host}/acme"
    publish(out, uri, QUIET)
    env = {**os.environ, "NIM_CACHE_PATH": str(tmp_path / "shared-cache")}
    procs = [subprocess.Popen([str(VENV_BIN / "nimbuild"), "-q", "pull", "demo:1.0", "--registry", uri,
                               "--dest", str(tmp_path / f"dest{i}"), "--format", "json"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    for stdout, stderr, code in results:
        assert code == 0, stderr
    fetched = sorted(json.loads(stdout)["blobs_fetched"] for stdout, _, _ in results)
    assert sum(fetched) == 4, f"each blob was downloaded once in all: {fetched}"
    for i in range(2):
        assert_pulled_exactly(tmp_path / f"dest{i}", manifest)


def test_cli_publish_pull_ls_and_bad_input(tmp_path, registry, release):
    out, _ = release
    uri = f"oci://{registry.host}/acme"
    env = {**os.environ, "NIM_CACHE_PATH": str(tmp_path / "cli-cache")}

    def run(*args):
        return subprocess.run([str(VENV_BIN / "nimbuild"), *args], capture_output=True, text=True, env=env, timeout=120)

    published = run("publish", str(out), "--registry", uri, "--format", "json")
    assert published.returncode == 0, published.stderr
    assert json.loads(published.stdout)["blobs_sent"] == 4
    listed = run("registry", "ls", uri)
    assert listed.stdout.strip() == "demo: releases 1.0 (2 profile tag(s), 2 ModelPack)"
    for args, message in [(("pull", "demo", "--registry", uri), "expected MODEL:RELEASE"),
                          (("pull", "demo:1.0", "--registry", uri, "--select", "--profile", "x"), "give one"),
                          (("publish", str(tmp_path / "nothing"), "--registry", uri), "manifest not found")]:
        result = run(*args)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


# --- interoperability with clients nobody here wrote ------------------------------------------------

def test_skopeo_reads_a_published_profile_manifest(registry, release):
    out, manifest = release
    publish(out, f"oci://{registry.host}/acme", QUIET)
    profile = manifest.profiles[0]
    raw = subprocess.run([require("skopeo"), "inspect", "--raw", "--tls-verify=false",
                          f"docker://{registry.host}/acme/demo:1.0-{profile.id[:12]}"],
                         capture_output=True, text=True, check=True).stdout
    data = json.loads(raw)
    assert data["artifactType"] == "application/vnd.nimbuild.profile.v1+json"
    assert data["annotations"]["ai.nimbuild.profile.id"] == profile.id
    titles = {layer["annotations"]["org.opencontainers.image.title"]: layer["digest"] for layer in data["layers"]}
    assert titles == {rel: f.digest for rel, f in profile.files.items()}


def test_skopeo_copy_of_the_local_layout_gives_a_pullable_release(tmp_path, registry, release, cache):
    out, manifest = release
    layout = tmp_path / "layout"
    publish(out, str(layout), QUIET)
    subprocess.run([require("skopeo"), "copy", "--all", "--dest-tls-verify=false", f"oci:{layout}:demo:1.0",
                    f"docker://{registry.host}/mirror/demo:1.0"], check=True, capture_output=True)
    pull("demo:1.0", f"oci://{registry.host}/mirror", QUIET, dest=tmp_path / "dest", cache=cache)
    assert_pulled_exactly(tmp_path / "dest", manifest)


# --- NGC, through a stand-in (NGC itself cannot be reached from here) --------------------------------

class NgcStandIn:
    """STAND-IN for ngcsdk's Client (a mock of a remote service): records every call and keeps model
    versions as directories, laid out as ngcsdk downloads them (`<dest>/<model>_v<version>/`)."""

    class NotFound(Exception):
        pass

    NotFound.__name__ = "ResourceNotFoundException"

    class AlreadyExists(Exception):
        pass

    AlreadyExists.__name__ = "ResourceAlreadyExistsException"

    def __init__(self, root: Path):
        self.root, self.calls, self.models = root, [], set()
        self.registry = self
        self.model = self

    def create(self, target, **kwargs):
        self.calls.append(("create", target))
        if target in self.models:
            raise self.AlreadyExists(target)
        self.models.add(target)

    def _dir(self, target: str) -> Path:
        return self.root / target.replace("/", "__").replace(":", "@")

    def get_version(self, org_name, team_name, model_name, version):
        self.calls.append(("get_version", f"{org_name}/{team_name}/{model_name}:{version}"))
        if not self._dir(f"{org_name}/{team_name}/{model_name}:{version}").exists():
            raise self.NotFound(version)

    def upload_version(self, target, source):
        self.calls.append(("upload_version", target))
        import shutil

        shutil.copytree(source, self._dir(target))
        return ("ok", "Completed")

    def download_version(self, target, destination):
        self.calls.append(("download_version", target))
        import shutil

        model, version = target.rsplit("/", 1)[1].split(":")
        shutil.copytree(self._dir(target), Path(destination) / f"{model}_v{version}")

    def remove(self, target):
        self.calls.append(("remove", target))
        import shutil

        shutil.rmtree(self._dir(target))


def test_ngc_adapter_against_a_stand_in(tmp_path, release, cache, monkeypatch):
    out, manifest = release
    stand_in = NgcStandIn(tmp_path / "ngc")
    monkeypatch.setattr("nimbuild.registry.ngc.make_client", lambda org, team: stand_in)
    publish(out, "ngc://acme/speech", QUIET)
    ids = sorted(p.id[:12] for p in manifest.profiles)
    uploads = sorted(t for c, t in stand_in.calls if c == "upload_version")
    assert uploads == sorted([f"acme/speech/demo:1.0-{i}" for i in ids] + ["acme/speech/demo:1.0"])
    assert ("create", "acme/speech/demo") in stand_in.calls
    stand_in.calls.clear()
    publish(out, "ngc://acme/speech", QUIET)
    assert not [c for c in stand_in.calls if c[0] == "upload_version"], "an unchanged release uploads nothing"
    result = pull("demo:1.0", "ngc://acme/speech", QUIET, dest=tmp_path / "dest", cache=cache)
    assert result.blobs_sent == 4
    assert_pulled_exactly(tmp_path / "dest", manifest)
    changed_out = tmp_path / "changed"
    make_release(changed_out, big_seed=3)
    with pytest.raises(RegistryError, match="already published .* different content"):
        publish(changed_out, "ngc://acme/speech", QUIET)


def test_ngc_without_sdk_or_key_says_what_is_missing(tmp_path, release, monkeypatch):
    out, _ = release
    monkeypatch.delenv("NGC_API_KEY", raising=False)
    monkeypatch.delenv("NGC_CLI_API_KEY", raising=False)
    with pytest.raises(RegistryError, match="ngcsdk|NGC_API_KEY"):
        publish(out, "ngc://acme", QUIET)
    with pytest.raises(RegistryError, match="expected ngc://org or ngc://org/team"):
        publish(out, "ngc://a/b/c", QUIET)


def test_bearer_token_flow(tmp_path, registry, release, cache, monkeypatch):
    from helpers.servers import TokenGateway

    out, manifest = release
    gateway = TokenGateway(registry.port, "ci-bot", "t0ken-secret")
    try:
        uri = f"oci://{gateway.host}/acme"
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "none"))
        with pytest.raises(RegistryError, match="token service refused"):
            publish(out, uri, QUIET)  # no credentials: the realm says no
        monkeypatch.setenv("NIMBUILD_REGISTRY_USERNAME", "ci-bot")
        monkeypatch.setenv("NIMBUILD_REGISTRY_PASSWORD", "t0ken-secret")
        assert publish(out, uri, QUIET).blobs_sent == 4
        pull("demo:1.0", uri, QUIET, dest=tmp_path / "dest", cache=cache)
        assert_pulled_exactly(tmp_path / "dest", manifest)
        assert gateway.issued >= 1
    finally:
        gateway.stop()


def test_a_file_verified_before_and_unchanged_since_is_not_hashed_again(tmp_path, monkeypatch):
    import time

    from nimbuild.registry import cache as cache_module
    from nimbuild.registry.cache import Stamps

    blob = tmp_path / "model.onnx"
    blob.write_bytes(b"weights" * 1000)
    digest, size = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest(), blob.stat().st_size
    hashed = []
    real = cache_module.file_matches
    monkeypatch.setattr(cache_module, "file_matches", lambda *a: hashed.append(a) or real(*a))
    stamps = Stamps(tmp_path / "cache")

    assert stamps.matches(blob, digest, size) and len(hashed) == 1
    assert stamps.matches(blob, digest, size) and len(hashed) == 2, "a file written seconds ago is not stamped (racy)"
    old = time.time() - 60
    os.utime(blob, (old, old))
    assert stamps.matches(blob, digest, size) and len(hashed) == 3  # checked, and stamped
    assert stamps.matches(blob, digest, size) and len(hashed) == 3, "unchanged: trusted without reading it"
    os.link(blob, tmp_path / "linked.onnx")  # what each start does to put it in Triton's repository
    assert stamps.matches(blob, digest, size) and len(hashed) == 3, "a new link is no change"

    blob.write_bytes(b"WEIGHTS" * 1000)  # the same size, new bytes, a new mtime
    assert not stamps.matches(blob, digest, size) and len(hashed) == 4
    os.utime(blob, (old - 60, old - 60))
    assert not stamps.matches(blob, digest, size) and len(hashed) == 5, "a mismatch is never stamped"
    blob.unlink()
    blob.write_bytes(b"WEIGHTS" * 1000)
    os.utime(blob, (old, old))  # replaced, with the stamped mtime: a new inode
    assert not stamps.matches(blob, digest, size) and len(hashed) == 6
    assert not Stamps(tmp_path / "cache").matches(tmp_path / "missing", digest, size)
