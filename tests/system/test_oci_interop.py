"""Profiles as artifacts the rest of the ecosystem reads (docs/design.md §12), each read back by a client
nimbuild did not write: CNCF ModelPack manifests (skopeo, the oras SDK, ModelPack's own JSON schema),
KServe's OCI model images (extracted as KServe's storage initializer does, then served as UID 1000
from /mnt/models), model stores on S3 (moto's server, a stand-in for AWS S3, read by the bundled
tritonserver), and an air-gapped mirror made by `skopeo copy --all`."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import numpy as np
import pytest

from helpers.paths import REPO, VENV_BIN
from helpers.registry import assert_pulled_exactly
from helpers.runtime import Runtime
from helpers.servers import Registry, S3Server, free_port, require
from nimbuild.errors import RegistryError
from nimbuild.registry import modelpack, publish, pull
from nimbuild.registry.artifacts import MODELPACK_OF, canonical, digest_of
from nimbuild.registry.cache import BlobCache
from nimbuild.util.files import sha256_file
from nimbuild.util.progress import Reporter

QUIET = Reporter(quiet=True)
SCHEMA = REPO / "tests" / "schemas" / "modelpack" / "config-schema.json"
# docs/spec.md of modelpack/model-spec: the layer media types implementations SHOULD support
SPEC_LAYER_TYPES = {f"application/vnd.cncf.model.{kind}.v1.{form}"
                    for kind in ("weight", "weight.config", "doc", "code", "dataset")
                    for form in ("raw", "tar", "tar+gzip", "tar+zstd")}
EMBED = "onnxruntime-fp32-throughput"


def only(out: Path, tmp: Path, *descriptions: str) -> Path:
    """A manifest of the compile in `out` with only the profiles named: the example has ten (550 MB)
    and a test that publishes one or two need not send them all. The files are hard links (a
    manifest's local files lie in its own directory)."""
    import os

    from nimbuild.profiles.manifest import Manifest, load_manifest

    picked = [p for p in load_manifest(out / "profiles.yaml").profiles if p.description in descriptions]
    assert len(picked) == len(descriptions)
    path = tmp / "subset" / "profiles.yaml"
    for f in (f for p in picked for f in p.files.values()):
        (path.parent / f.uri).parent.mkdir(parents=True, exist_ok=True)
        if not (path.parent / f.uri).exists():
            os.link(out / f.uri, path.parent / f.uri)
    Manifest(picked).save(path)
    return path


def raw(host: str, ref: str, *extra: str) -> bytes:
    """`skopeo inspect --raw` of docker://HOST/REF: the bytes the registry serves."""
    return subprocess.run([require("skopeo"), "inspect", "--raw", "--tls-verify=false", *extra, f"docker://{host}/{ref}"],
                          capture_output=True, check=True, timeout=60).stdout


def blob(host: str, repo: str, digest: str) -> bytes:
    body = httpx.get(f"http://{host}/v2/{repo}/blobs/{digest}", timeout=30, follow_redirects=True).content
    assert digest_of(body) == digest
    return body


# --- ModelPack ----------------------------------------------------------------------------------------

def check_modelpack(manifest: dict, config: dict, profile) -> None:
    """The spec's rules (docs/spec.md, docs/config.md), field by field, and the config's JSON schema."""
    import jsonschema

    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.cncf.model.config.v1+json"
    layers = manifest["layers"]
    assert {layer["mediaType"] for layer in layers} <= SPEC_LAYER_TYPES
    # the same blobs as nimbuild's own manifest: one layer per file, by digest and size
    assert {layer["annotations"]["org.cncf.model.filepath"]: (layer["digest"], layer["size"]) for layer in layers} == \
        {rel: (f.digest, f.size) for rel, f in profile.files.items()}
    for layer in layers:
        metadata = json.loads(layer["annotations"]["org.cncf.model.file.metadata+json"])
        assert metadata["size"] == layer["size"] and metadata["typeflag"] == ord("0")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(config)
    assert config["modelfs"] == {"type": "layers", "diffIds": [layer["digest"] for layer in layers]}
    assert config["descriptor"]["name"] == profile.model and config["descriptor"]["version"] == profile.release


def test_every_profile_is_also_a_modelpack_artifact_over_the_same_blobs(registry, release):
    out, manifest = release
    report = publish(out, f"oci://{registry.host}/acme", QUIET)
    assert report.blobs_sent == len({f.digest for p in manifest.profiles for f in p.files.values()})
    index = json.loads(raw(registry.host, "acme/demo:1.0"))
    packed = {e["annotations"][MODELPACK_OF]: e["digest"] for e in index["manifests"] if MODELPACK_OF in e["annotations"]}
    assert set(packed) == {p.id for p in manifest.profiles}
    for profile in manifest.profiles:
        body = raw(registry.host, f"acme/demo:1.0-{profile.id[:12]}-modelpack")
        assert digest_of(body) == packed[profile.id], "the tag and the release index name the same manifest"
        data = json.loads(body)
        config = json.loads(blob(registry.host, "acme/demo", data["config"]["digest"]))
        check_modelpack(data, config, profile)
        assert config["config"]["format"] == {"onnxruntime": "onnx", "tensorrt": "tensorrt"}[profile.tags["backend"]]
        assert config["config"]["precision"] == {"fp32": "float32", "fp16": "float16"}[profile.tags["precision"]]
        kinds = {layer["annotations"]["org.cncf.model.filepath"]: layer["mediaType"] for layer in data["layers"]}
        assert kinds.get("model.onnx", modelpack.WEIGHT) == modelpack.WEIGHT
        assert kinds["tokenizer/vocab.txt"] == modelpack.WEIGHT_CONFIG
    # nothing stored twice: the registry holds the files once, plus small manifests and configs
    files = sum({f.digest: f.size for p in manifest.profiles for f in p.files.values()}.values())
    stored = sum(p.stat().st_size for p in (registry.root / "data").rglob("data") if p.is_file())
    assert files <= stored < files + 64 * 1024


def test_the_compiled_example_is_a_valid_modelpack_with_its_parameter_count(minilm_compiled, minilm_dir, registry,
                                                                           tmp_path, monkeypatch):
    """The real MiniLM: its task gives the capabilities, its graph the parameter count: the checkpoint's
    22.7M less the pooler, which an embedding model does not run (mean pooling): 22.6M."""
    from safetensors import safe_open

    from nimbuild.profiles.manifest import load_manifest

    with safe_open(str(minilm_dir / "model.safetensors"), "np") as weights:
        served = sum(int(np.prod(weights.get_slice(k).get_shape())) for k in weights.keys() if "pooler" not in k)

    out, _ = minilm_compiled
    publish(only(out, tmp_path, EMBED), f"oci://{registry.host}/acme", QUIET)
    profile = next(p for p in load_manifest(out / "profiles.yaml").profiles if p.description == EMBED)
    data = json.loads(raw(registry.host, f"acme/minilm-embed:{profile.release}-{profile.id[:12]}-modelpack"))
    config = json.loads(raw(registry.host, f"acme/minilm-embed:{profile.release}-{profile.id[:12]}-modelpack",
                            "--config"))
    check_modelpack(data, config, profile)
    assert config["config"] == {"format": "onnx", "precision": "float32", "architecture": "transformer",
                                "paramSize": f"{served / 1e6:.1f}M",
                                "capabilities": {"inputTypes": ["text"], "outputTypes": ["embedding"]}}
    # a graph that keeps its weights inline and is bigger than publish parses is not counted
    monkeypatch.setattr(modelpack, "COUNTED_GRAPH_BYTES", profile.files["model.onnx"].size - 1)
    assert "paramSize" not in json.loads(modelpack.config(profile, out))["config"]


def test_oras_pulls_a_modelpack_profile_into_its_files(registry, release, tmp_path):
    """The oras SDK (what KServe's storage initializer is built on) names each file by its title."""
    import oras.client

    out, manifest = release
    publish(out, f"oci://{registry.host}/acme", QUIET)
    profile = manifest.profiles[0]
    client = oras.client.OrasClient(insecure=True)
    client.pull(target=f"{registry.host}/acme/demo:1.0-{profile.id[:12]}-modelpack", outdir=str(tmp_path / "oras"))
    for rel, f in profile.files.items():
        path = tmp_path / "oras" / rel
        assert path.stat().st_size == f.size and "sha256:" + sha256_file(path) == f.digest, rel


def test_pull_reads_a_modelpack_manifest_alone(registry, release, tmp_path):
    """Only the ModelPack manifest copied on its own (as a ModelPack tool would pass it on) is still the
    profile: nimbuild pull rebuilds it from the manifest's annotations and layers."""
    out, manifest = release
    publish(out, f"oci://{registry.host}/acme", QUIET)
    profile = manifest.profiles[0]
    subprocess.run([require("skopeo"), "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                    f"docker://{registry.host}/acme/demo:1.0-{profile.id[:12]}-modelpack",
                    f"docker://{registry.host}/solo/demo:1.0"], check=True, capture_output=True, timeout=120)
    report = pull("demo:1.0", f"oci://{registry.host}/solo", QUIET, dest=tmp_path / "dest",
                  cache=BlobCache(tmp_path / "cache"))
    assert [p.id for p in report.profiles] == [profile.id]
    assert_pulled_exactly(tmp_path / "dest", manifest, only={profile.description})


def test_a_modelpack_artifact_nimbuild_did_not_write_is_one_clear_error(registry, release, tmp_path):
    from nimbuild.registry.oci import OciStore

    out, manifest = release
    publish(out, f"oci://{registry.host}/acme", QUIET)
    data = json.loads(raw(registry.host, f"acme/demo:1.0-{manifest.profiles[0].id[:12]}-modelpack"))
    data["annotations"] = {"org.opencontainers.image.title": "made by another tool"}
    store = OciStore(f"oci://{registry.host}/acme")
    store.push_manifest("acme/demo", "foreign", canonical(data), data["mediaType"])
    store.close()
    with pytest.raises(RegistryError, match="a ModelPack artifact without a nimbuild profile"):
        pull("demo:foreign", f"oci://{registry.host}/acme", QUIET, dest=tmp_path / "dest",
             cache=BlobCache(tmp_path / "cache"))
    assert not (tmp_path / "dest").exists()


# --- KServe's OCI model images ------------------------------------------------------------------------

def kserve_fetch(host: str, target: str, out_dir: Path) -> None:
    """What KServe's storage initializer does with `storageUri: oci://...` (kserve/kserve
    python/storage/kserve_storage/kserve_storage.py, Storage._download_oci, at aaac4e29): the oras
    client's manifest, each tar layer streamed into tarfile by its media type, and only the members
    under models/ extracted, renamed below it, with tarfile's "data" filter."""
    import oras.client

    modes = {"application/vnd.oci.image.layer.v1.tar+gzip": "r|gz", "application/vnd.oci.image.layer.v1.tar": "r|"}
    client = oras.client.OrasClient(insecure=True)
    manifest = client.get_manifest(f"{host}/{target}")
    out_dir.mkdir(parents=True)
    for layer in manifest["layers"]:
        mode = modes.get(layer["mediaType"])
        if mode is None:
            continue
        with client.get_blob(f"{host}/{target}", layer["digest"], stream=True) as response:
            response.raise_for_status()
            with tarfile.open(fileobj=response.raw, mode=mode) as tar:
                for member in tar:
                    name = member.name.rstrip("/")
                    if name == "models" or not name.startswith("models/"):
                        continue
                    member.name = name[len("models/"):]
                    tar.extract(member, path=out_dir, filter="data")


def test_model_images_are_reproducible_and_hold_the_profile_under_models(registry, release, tmp_path):
    out, manifest = release
    first = publish(out, f"oci://{registry.host}/acme", QUIET, images="models")
    profile = manifest.profiles[0]
    tag = f"1.0-{profile.id[:12]}-image"
    assert f"demo:{tag}" in first.images
    body = raw(registry.host, f"acme/demo:{tag}")
    again = publish(out, str(tmp_path / "layout"), QUIET, images="models")  # elsewhere, built again
    from nimbuild.registry.layout import LayoutStore

    assert LayoutStore(tmp_path / "layout").get_manifest("demo", tag) == body and again.images, "not reproducible"
    image = json.loads(body)
    config = json.loads(blob(registry.host, "acme/demo", image["config"]["digest"]))
    assert config["os"] == "linux" and config["rootfs"]["diff_ids"] == [layer["digest"] for layer in image["layers"]]
    with pytest.raises(RegistryError, match="names one manifest, not a release"):
        pull(f"demo:{tag}", f"oci://{registry.host}/acme", QUIET, dest=tmp_path / "dest",
             cache=BlobCache(tmp_path / "cache"))
    kserve_fetch(registry.host, f"acme/demo:{tag}", tmp_path / "mnt-models")
    assert_pulled_exactly(tmp_path / "mnt-models", manifest, only={profile.description})
    for layer in image["layers"]:  # reproducible members: owner 0:0, mtime 0, fixed modes
        with tarfile.open(fileobj=__import__("io").BytesIO(blob(registry.host, "acme/demo", layer["digest"]))) as tar:
            for member in tar.getmembers():
                assert (member.uid, member.gid, member.mtime) == (0, 0, 0) and member.mode in (0o644, 0o755)
                assert member.name.startswith("models")


def test_an_image_published_unchanged_is_not_sent_again_and_a_changed_one_is_refused(registry, release, tmp_path):
    out, manifest = release
    uri = f"oci://{registry.host}/acme"
    publish(out, uri, QUIET, images="models")
    again = publish(out, uri, QUIET, images="models")
    assert again.blobs_sent == 0 and len(again.images) == 2
    with pytest.raises(RegistryError, match="already published .* with different content"):
        publish(out, uri, QUIET, images="modelcar")  # a shell layer more: other content under the same tag


def test_modelcar_without_a_static_busybox_is_refused_before_anything_is_sent(registry, release, tmp_path, monkeypatch):
    out, _ = release
    monkeypatch.setenv("NIMBUILD_BUSYBOX", sys.executable)  # dynamically linked
    with pytest.raises(RegistryError, match="not a statically linked executable"):
        publish(out, f"oci://{registry.host}/acme", QUIET, images="modelcar")
    assert httpx.get(f"http://{registry.host}/v2/acme/demo/tags/list", timeout=5).status_code == 404


def test_kserve_fetches_a_model_image_and_runtime_min_serves_it_from_mnt_models_as_uid_1000(
        minilm_compiled, registry, tmp_path_factory):
    """The whole KServe path with no registry at serve time: publish --images, the storage
    initializer's extraction, then runtime_min as UID 1000 with /mnt/models mounted read-only and no
    manifest named (it finds the profile there), answering an embeddings request."""
    import shutil
    import tempfile

    from helpers import pods as pod
    from nimbuild.profiles.manifest import load_manifest

    if (why := pod.pod_user_refusal()) is not None:
        pytest.skip(why)
    out, _ = minilm_compiled
    profile = next(p for p in load_manifest(out / "profiles.yaml").profiles if p.description == EMBED)
    publish(only(out, tmp_path_factory.mktemp("kserve"), EMBED), f"oci://{registry.host}/kserve", QUIET,
            images="models")
    root = Path(tempfile.mkdtemp(prefix="nimbuild-kserve-"))
    root.chmod(0o755)  # the pod's user walks through it, as through an image's /
    models = root / "models"
    kserve_fetch(registry.host, f"kserve/minilm-embed:{profile.release}-{profile.id[:12]}-image", models)
    for own in ("cache", "work"):  # the pod's emptyDir volumes, its own
        (root / own).mkdir()
        shutil.chown(root / own, pod.op.USER_ID, pod.op.GROUP_ID)
    predictor = KServePredictor(root, models)
    try:
        predictor.wait_ready(180)
        reply = httpx.post(f"{predictor.url}/v1/embeddings",
                           json={"model": "minilm-embed", "input": ["served from a model image"]}, timeout=60)
        assert reply.status_code == 200, reply.text
        assert abs(np.linalg.norm(reply.json()["data"][0]["embedding"]) - 1) < 1e-4
        text = predictor.log.read_text()
        assert "Manifest: /mnt/models/profiles.yaml" in text and f"Selected profile: {profile.id}" in text, text
    finally:
        code = predictor.stop()
        text = predictor.log.read_text()
        shutil.rmtree(root, ignore_errors=True)
    assert code == 0, text[-2000:]


class KServePredictor(Runtime):
    """runtime_min as KServe's predictor container runs it: UID 1000, the model mounted read-only at
    /mnt/models, no manifest named and no registry (readiness and stop are Runtime's)."""

    def __init__(self, root: Path, models: Path):
        from helpers import pods as pod

        self.port = free_port()
        self.log = root / "runtime.log"
        env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": "/tmp", "NIM_CACHE_PATH": str(root / "cache"),
               "NIM_HTTP_API_PORT": str(self.port), "NIM_WORKSPACE": str(root / "work")}
        self.process = subprocess.Popen(**pod.as_pod(["runtime_min", "serve", "--host", "127.0.0.1"], env,
                                                      mounts={Path("/mnt/models"): models},
                                                      stdout=subprocess.DEVNULL, stderr=open(self.log, "wb")))
        self.url = f"http://127.0.0.1:{self.port}"


# --- S3 model stores ----------------------------------------------------------------------------------

@pytest.fixture
def s3(tmp_path):
    server = S3Server(tmp_path / "s3")
    server.client().create_bucket(Bucket="models")
    yield server
    server.stop()


def create_store(args: list[str], env: dict, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "create-model-store"), *args], capture_output=True, text=True, timeout=300,
                          env={**_base_env(), **env, "NIM_CACHE_PATH": str(cache)})


def _base_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}


def test_a_model_store_uploaded_to_s3_is_served_by_tritonserver_from_s3(minilm_compiled, s3, tmp_path):
    from helpers.triton import embed_from_repository
    from runtime_min.triton import locate_triton

    out, _ = minilm_compiled
    uri = f"s3://{s3.endpoint}/models/minilm"
    # a file a previous upload left in the model's folder goes; one beside the models stays
    s3.client().put_object(Bucket="models", Key="minilm/minilm-embed/1/stale.onnx", Body=b"old")
    s3.client().put_object(Bucket="models", Key="minilm/other-model/config.pbtxt", Body=b"name: 'other'")
    result = create_store(["-m", str(out / "profiles.yaml"), "--profile", EMBED, "--model-store", uri], s3.env,
                          tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert f"tritonserver --model-repository={uri}" in result.stdout
    keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket="models", Prefix="minilm/")["Contents"]}
    assert "minilm/minilm-embed/1/stale.onnx" not in keys and "minilm/other-model/config.pbtxt" in keys
    s3.client().delete_object(Bucket="models", Key="minilm/other-model/config.pbtxt")
    install = locate_triton(tmp_path / "work")
    install = type(install)(install.binary, install.backend_dir, {**install.env, **s3.env}, install.bundled,
                            install.backends)
    embedding = embed_from_repository(install, uri, tmp_path / "triton.log")
    assert embedding.shape == (1, 384) and abs(np.linalg.norm(embedding) - 1) < 1e-5


@pytest.mark.parametrize("uri,message", [
    ("s3://Not_A_Bucket/x", "is not a valid bucket name"),
    ("gs://bucket/x", "only s3:// model stores are written"),
    ("s3://missing-bucket/x", "NoSuchBucket"),
])
def test_a_bad_s3_store_is_one_line_and_a_non_zero_exit(minilm_compiled, s3, tmp_path, uri, message):
    out, _ = minilm_compiled
    result = create_store(["-m", str(out / "profiles.yaml"), "--profile", EMBED, "--model-store", uri],
                          {**s3.env, "AWS_ENDPOINT_URL": s3.endpoint}, tmp_path / "cache")
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_s3_endpoint_is_one_line(minilm_compiled, tmp_path):
    out, _ = minilm_compiled
    result = create_store(["-m", str(out / "profiles.yaml"), "--profile", EMBED, "--model-store",
                           f"s3://http://127.0.0.1:{free_port()}/models/x"],
                          {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_MAX_ATTEMPTS": "1"}, tmp_path / "cache")
    assert result.returncode != 0 and "failed" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()[-1]) < 400


# --- the air-gapped mirror ----------------------------------------------------------------------------

def test_skopeo_copy_all_mirrors_a_release_byte_for_byte_and_runtime_min_serves_from_the_mirror(
        minilm_compiled, tmp_path):
    """A release copied with all its manifests to a second registry keeps every digest, and an image
    whose baked manifest names the first registry serves from the mirror ($NIMBUILD_REGISTRY) with the
    first one gone."""
    from nimbuild.profiles.manifest import Manifest, load_manifest
    from nimbuild.registry import published_profiles

    out, _ = minilm_compiled
    release = load_manifest(out / "profiles.yaml").profiles[0].release
    origin, mirror = Registry(tmp_path / "origin"), Registry(tmp_path / "mirror")
    try:
        publish(only(out, tmp_path, EMBED, "onnxruntime-fp16-throughput"), f"oci://{origin.host}/nim", QUIET)
        baked = tmp_path / "baked.yaml"
        Manifest(published_profiles(f"minilm-embed:{release}", f"oci://{origin.host}/nim")).save(baked)
        subprocess.run([require("skopeo"), "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
                        "--dest-tls-verify=false", f"docker://{origin.host}/nim/minilm-embed:{release}",
                        f"docker://{mirror.host}/nim/minilm-embed:{release}"], check=True, capture_output=True,
                       timeout=300)
        index = raw(origin.host, f"nim/minilm-embed:{release}")
        assert raw(mirror.host, f"nim/minilm-embed:{release}") == index
        for entry in json.loads(index)["manifests"]:
            assert raw(mirror.host, f"nim/minilm-embed@{entry['digest']}") == \
                raw(origin.host, f"nim/minilm-embed@{entry['digest']}")
    finally:
        origin.stop()  # the site has no route to where the release was published
    try:
        runtime = Runtime(baked, tmp_path / "cache",
                          env={"NIMBUILD_REGISTRY": f"oci://{mirror.host}/nim", "NIM_MODEL_PROFILE": EMBED})
        try:
            runtime.wait_ready(180)
            reply = httpx.post(f"{runtime.url}/v1/embeddings", json={"model": "minilm-embed", "input": ["mirrored"]},
                               timeout=60)
            assert reply.status_code == 200, reply.text
        finally:
            assert runtime.stop() == 0
    finally:
        mirror.stop()


@pytest.mark.parametrize("path,message", [
    ("../../etc/passwd", "must be relative and stay inside the workspace"),
    ("/etc/passwd", "must be relative and stay inside the workspace"),
    ("model.onnx", "does not match the profile's content"),  # a layer swapped under the profile's id
])
def test_a_hostile_modelpack_manifest_is_refused_as_a_manifest_is(release, path, message):
    """The profile a ModelPack manifest carries goes through the manifest reader's own checks: file
    paths stay inside the workspace and the id must match the files the layers name."""
    from nimbuild.errors import NimbuildError

    _, manifest = release
    profile = manifest.profiles[0]
    body = json.loads(modelpack.manifest(profile, modelpack.config(profile, None), {}))
    body["layers"][0]["annotations"][modelpack.FILEPATH] = path
    body["layers"][0]["digest"] = "sha256:" + "0" * 64
    with pytest.raises(NimbuildError, match=message):
        modelpack.profile_of(body, "hostile", lambda digest: f"oci://127.0.0.1:1/ns/demo@{digest}")
