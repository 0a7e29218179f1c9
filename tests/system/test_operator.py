"""The NIM Operator's flow replayed as subprocesses, as its controllers run them (tests/helpers/nim_operator.py
cites the Go): a release published to a real docker-registry and baked into an "image" (a folder
standing for the image's filesystem, its manifest where the operator's probe looks); the probe's
`sh -c`, parsed with the operator's v1/v2 rules; NIMCache's caching Job (`download-to-cache
--profiles ID ID`, NIM_CACHE_PATH and NGC_API_KEY only, no registry argument) as UID 1000 / GID 2000
into a fresh PVC; then two NIMServices at once, each with the operator's environment, as UID 1000
on that cache made read-only, answering the probes, the task APIs and /v1/metrics.

Running as another user needs root (CI runs as root); elsewhere these tests skip and say so.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from helpers import nim_operator as op
from helpers.paths import REPO, VENV_BIN
from helpers.pods import as_pod, pod_user_refusal
from helpers.runtime import Runtime

EMBED = "onnxruntime-fp32-throughput"
SPEECH = "onnxruntime-fp32-throughput-str"
SPEECH_FILE = REPO / "examples" / "asr-digits" / "speech" / "call-five-five-one-two.wav"


@pytest.fixture(scope="module")
def as_pod_user():
    if (why := pod_user_refusal()) is not None:
        pytest.skip(why)


@pytest.fixture(scope="module")
def image(as_pod_user, minilm_compiled, digits_compiled):
    """A published release of each example and an image folder that bakes their manifest, as
    `make image --release ... --registry ...` does: (image root, its environment, registry, baked profiles)."""
    from click.testing import CliRunner

    from helpers.servers import Registry
    from nimbuild.cli import main
    from nimbuild.profiles.nim import read_profiles
    from nimbuild.registry import publish
    from nimbuild.util.progress import Reporter

    root = Path(tempfile.mkdtemp(prefix="nimbuild-operator-"))
    root.chmod(0o755)  # the pod's user walks through it, as through an image's /
    server = Registry(root / "registry", access_log=True)
    registry = f"oci://{server.host}/nim"
    try:
        for out in (minilm_compiled[0], digits_compiled):
            publish(out, registry, Reporter(quiet=True))
        manifest = root / "image" / "opt/nim/etc/default/model_manifest.yaml"
        manifest.parent.mkdir(parents=True)
        result = CliRunner().invoke(main, ["-q", "profiles", "export", "--format", "nim-v2", "--registry", registry,
                                           "--release", "minilm-embed:0.1.0", "--release", "asr-digits:0.1.0",
                                           "--out", str(manifest)])
        assert result.exit_code == 0, result.output
        home = root / "image" / "home" / "nim"
        home.mkdir(parents=True)
        os.chown(home, op.USER_ID, op.GROUP_ID)
        env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(home), "NIM_MANIFEST_PATH": str(manifest),
               "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        yield root / "image", env, server, read_profiles(manifest).profiles
    finally:
        server.stop()
        subprocess.run(["chmod", "-R", "u+w", str(root)])
        subprocess.run(["rm", "-rf", str(root)])


def _by_description(profiles, model: str, description: str):
    (found,) = [p for p in profiles if p.model == model and p.description == description]
    return found


@pytest.fixture(scope="module")
def pvc(image):
    """NIMCache's caching Job on a fresh PVC: the selected profiles' ids after one --profiles, and
    only NIM_CACHE_PATH and NGC_API_KEY beside the image's environment. (the PVC, the Job's result)"""
    root, env, _, profiles = image
    cache = root.parent / "model-store"
    cache.mkdir()
    os.chown(cache, 0, op.GROUP_ID)
    cache.chmod(0o2775)  # fsGroup 2000: group-owned, setgid, group-writable, as the kubelet prepares it
    selected = [_by_description(profiles, "minilm-embed", EMBED).id, _by_description(profiles, "asr-digits", SPEECH).id]
    job = subprocess.run(**as_pod(["download-to-cache", *op.caching_job_args(selected)],
                                   {**env, **op.caching_job_env(str(cache))}, capture_output=True, text=True, timeout=600))
    return cache, job, selected


def test_the_manifest_probe_prints_a_manifest_the_operators_parser_takes(image):
    root, env, _, profiles = image
    probe = subprocess.run(**as_pod(op.probe_command(str(root)), env, capture_output=True, text=True, timeout=30))
    assert probe.returncode == 0, probe.stderr
    parsed = op.parse(probe.stdout)
    assert parsed.version == "v2"
    assert parsed.profiles == {p.id: p.tags for p in profiles}
    assert {p.model for p in profiles} == {"minilm-embed", "asr-digits"}
    # every file names the registry it is in: the caching Job passes no registry
    assert all(f.uri.startswith("oci://127.0.0.1:") for p in profiles for f in p.files.values())
    # without a baked manifest the operator treats the image as model-free; the probe says so
    empty = subprocess.run(**as_pod(op.probe_command(str(root / "nothing-here")), env, capture_output=True, text=True,
                                     timeout=30))
    assert empty.stdout.strip() == "model_manifest.yaml not found"


def test_nimbuilds_own_manifest_is_not_what_the_operator_reads_so_the_image_bakes_v2(minilm_compiled):
    own = (minilm_compiled[0] / "profiles.yaml").read_text()
    assert op.parser_version(own) == "v1"  # schema_version "1.0" has no "2": GetNIMParser picks v1
    with pytest.raises(op.GoYamlError, match="cannot unmarshal"):
        op.parse(own)


def test_the_operators_profile_matching_on_the_baked_manifest(image):
    _, _, _, profiles = image
    parsed_ids = {p.id for p in profiles}
    manifest = op.OperatorManifest("v2", {p.id: p.tags for p in profiles})
    fp32_generic = {p.id for p in profiles if p.tags.get("backend") == "onnxruntime" and p.tags["precision"] == "fp32"}
    assert set(op.match_profiles(manifest, op.ModelSpec(engine="onnxruntime", precision="fp32"), [])) == fp32_generic
    # engines carry no gpu/key/product_name_regex tags: the operator keeps them on any cluster and
    # leaves the choice to the runtime's selection by compute capability
    engines = {p.id for p in profiles if p.tags.get("backend") == "tensorrt_rtx"}
    assert engines and set(op.match_profiles(manifest, op.ModelSpec(engine="tensorrt"), ["NVIDIA-L40S"])) == engines
    assert set(op.match_profiles(manifest, op.ModelSpec(), [])) == parsed_ids
    assert op.caching_job_args(["all"]) == ["--all"]


def test_the_caching_job_fills_a_fresh_pvc_as_uid_1000_with_verified_files_only(image, pvc):
    from nimbuild.profiles.manifest import parse_manifest
    from nimbuild.util.files import file_matches

    _, env, server, profiles = image
    cache, job, selected = pvc
    assert job.returncode == 0, job.stderr
    lines = job.stdout.splitlines()
    assert len(lines) == 2 and all(": downloaded, " in line for line in lines), job.stdout
    assert [line.split()[0] for line in lines] == selected
    blobs = {"sha256:" + b.name: b for b in (cache / "blobs" / "sha256").iterdir()}
    wanted = {f.digest: f.size for p in profiles if p.id in selected for f in p.files.values()}
    # the profiles' files, and each release's profiles.yaml, which the download reads its profiles from
    extra = set(blobs) - set(wanted)
    assert set(wanted) <= set(blobs) and len(extra) == 2
    assert {parse_manifest(blobs[d].read_text()).profiles[0].model for d in extra} == {"minilm-embed", "asr-digits"}
    for digest, blob in blobs.items():
        info = blob.stat()
        assert (info.st_uid, info.st_gid) == (op.USER_ID, op.GROUP_ID)  # the Job's user, the PVC's group
        assert file_matches(blob, digest, info.st_size)
    assert not any((cache / "partial").iterdir())  # nothing half-downloaded is left
    # each blob came from the registry once
    assert all(server.blob_gets().get(d) == 1 for d in wanted), server.blob_gets()
    # the Job runs again (a retry after a node failure): nothing is downloaded twice
    again = subprocess.run(**as_pod(["download-to-cache", *op.caching_job_args(selected)],
                                     {**env, **op.caching_job_env(str(cache))}, capture_output=True, text=True,
                                     timeout=300))
    assert again.returncode == 0 and again.stdout.count("already in the cache") == 2, again.stderr
    assert all(server.blob_gets().get(d) == 1 for d in wanted)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class NimService(Runtime):
    """runtime_min started as the NIMService's Deployment starts the image: its entrypoint, the
    operator's environment, UID 1000 (readiness, stop and the no-Triton-left check are Runtime's)."""

    def __init__(self, env: dict, cache: Path, profile: str, grpc: bool, log: Path):
        self.port = _free_port()
        self.grpc_port = _free_port() if grpc else None
        self.log = log
        self.process = subprocess.Popen(**as_pod(
            ["runtime_min", "serve"], {**env, **op.nimservice_env(self.port, self.grpc_port, profile, str(cache))},
            stdout=subprocess.DEVNULL, stderr=open(log, "wb")))
        self.url = f"http://127.0.0.1:{self.port}"


def _snapshot(root: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def services(image, pvc, tmp_path_factory):
    """Both NIMServices, started at once on the one cache, mounted read-only (a-w: UID 1000 may not
    write it; root, which ignores mode bits, is not what a pod runs as)."""
    _, env, _, profiles = image
    cache, job, _ = pvc
    assert job.returncode == 0, job.stderr
    subprocess.run(["chmod", "-R", "a-w", str(cache)], check=True)
    before = _snapshot(cache)
    logs = tmp_path_factory.mktemp("nimservice-logs")
    embed = NimService(env, cache, _by_description(profiles, "minilm-embed", EMBED).id, False, logs / "embed.log")
    speech = NimService(env, cache, _by_description(profiles, "asr-digits", SPEECH).id, True, logs / "speech.log")
    try:
        embed.wait_ready(180)
        speech.wait_ready(180)
        yield embed, speech
    finally:
        codes = [embed.stop(), speech.stop()]
        subprocess.run(["chmod", "-R", "u+w", str(cache)])
    assert codes == [0, 0]
    assert _snapshot(cache) == before, "a service wrote into the read-only cache"


def test_nimservices_answer_the_probes_and_the_task_api_from_a_read_only_cache(services):
    embed, speech = services
    for service in services:
        assert httpx.get(f"{service.url}/v1/health/live", timeout=5).status_code == 200  # the liveness probe
        assert httpx.get(f"{service.url}/v1/health/ready", timeout=5).json()["status"] == "ready"
    # the Service routes to the pod's address, not its loopback: every port listens on all addresses
    reply = httpx.post(f"{embed.url}/v1/embeddings", json={"model": "minilm-embed", "input": ["from the cluster"]},
                       timeout=60)
    assert reply.status_code == 200 and len(reply.json()["data"][0]["embedding"]) == 384
    for text in (embed.log.read_text(), speech.log.read_text()):
        assert "found in the cache" in text and "Selected profile" in text


def test_nimservices_log_one_json_object_per_line(services):
    for service in services:
        lines = service.log.read_text().splitlines()
        assert len(lines) > 5
        records = [json.loads(line) for line in lines]  # NIM_JSONL_LOGGING=1: nothing else reaches stderr
        assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
        assert any(r["message"].startswith("Selected profile: ") for r in records)


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_the_speech_nimservice_answers_riva_grpc_on_another_address_and_counts_it_in_flight(services):
    import riva.client

    _, speech = services
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    service = riva.client.ASRService(riva.client.Auth(uri=f"{address}:{speech.grpc_port}"))
    config = riva.client.RecognitionConfig(language_code="en-US", max_alternatives=1)
    response = service.offline_recognize(SPEECH_FILE.read_bytes(), config)
    assert response.results[0].alternatives[0].transcript == "call five five one two"

    def running() -> float:
        text = httpx.get(f"{speech.url}/v1/metrics", timeout=5).text
        (line,) = [line for line in text.splitlines() if line.startswith("num_requests_running ")]
        return float(line.split()[1])

    # a stream held open: the autoscaling gauge counts it while it runs, and not after
    release = threading.Event()
    audio = SPEECH_FILE.read_bytes()

    def chunks():
        yield audio[:3200]
        release.wait(30)
        yield audio[3200:]

    streaming = riva.client.StreamingRecognitionConfig(config=riva.client.RecognitionConfig(language_code="en-US"),
                                                       interim_results=False)
    results = []
    worker = threading.Thread(target=lambda: results.extend(service.streaming_response_generator(chunks(), streaming)))
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while running() < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert running() == 1
    finally:
        release.set()
        worker.join(60)
    assert results and running() == 0
