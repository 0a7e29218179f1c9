"""The runtime_min image (`make image`, scripts/build-image.sh) built with buildah and run with podman
as the NIM Operator runs it: the manifest probe's `sh -c`, the caching Job's `download-to-cache
--profiles ID` into a fresh PVC-like folder as the image's UID 1000 / GID 2000, then the image's own
entrypoint on that cache mounted read-only, answering /v1/embeddings. One end-to-end test: the build
takes about a minute (the Debian base is made once and kept in build/image/).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from helpers import nim_operator as op
from helpers.paths import REPO
from helpers.servers import free_port, require

pytestmark = pytest.mark.slow
PODMAN_RUN = ["--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--network", "host"]


def _podman(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", "--storage-driver", "vfs", *args], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def built(minilm_compiled):
    """The image, built for the example's release as published to a docker-registry on loopback."""
    from helpers.servers import Registry
    from nimbuild.registry import publish
    from nimbuild.util.progress import Reporter

    for tool in ("buildah", "podman", "mmdebstrap", "runc"):
        require(tool)
    if os.geteuid() != 0:
        pytest.skip("buildah's chroot isolation and podman's runc runtime need root here")
    root = Path(tempfile.mkdtemp(prefix="nimbuild-image-"))
    server = Registry(root / "registry")
    registry = f"oci://{server.host}/nim"
    tag = f"localhost/runtime_min-test:{os.getpid()}"
    try:
        publish(minilm_compiled[0], registry, Reporter(quiet=True))
        start = time.monotonic()
        build = subprocess.run([str(REPO / "scripts" / "build-image.sh"), "--tag", tag, "--release", "minilm-embed:0.1.0",
                                "--registry", registry], capture_output=True, text=True, timeout=1200, cwd=REPO,
                               env={**os.environ, "PY": sys.executable})
        assert build.returncode == 0, build.stderr[-3000:]
        print(f"image built in {time.monotonic() - start:.0f} s: {build.stdout.strip()}")
        yield tag, root
    finally:
        subprocess.run(["buildah", "--storage-driver", "vfs", "rmi", "-f", tag], capture_output=True)
        server.stop()
        subprocess.run(["chmod", "-R", "u+w", str(root)])
        shutil.rmtree(root, ignore_errors=True)


def test_the_image_caches_and_serves_as_the_nim_operator_runs_it(built):
    tag, root = built
    # the manifest probe, the operator's own shell line (without its `sleep infinity`)
    probe = _podman("run", "--rm", *PODMAN_RUN, "--entrypoint", "sh", tag, *op.probe_command()[1:], timeout=120)
    assert probe.returncode == 0, probe.stderr
    manifest = op.parse(probe.stdout)
    assert manifest.version == "v2"
    (fp32,) = [pid for pid, tags in manifest.profiles.items()
               if tags.get("backend") == "onnxruntime" and tags.get("precision") == "fp32"]
    # nothing of the image is the pod user's to write; /bin/sh is there (the probe just used it)
    who = _podman("run", "--rm", *PODMAN_RUN, "--entrypoint", "sh", tag, "-c",
                  "id -u; id -g; touch /opt/runtime_min/venv/x 2>/dev/null && echo writable || echo read-only",
                  timeout=120)
    assert who.stdout.split() == ["1000", "2000", "read-only"], who.stdout + who.stderr

    # the caching Job: a fresh PVC (group 2000, setgid, as fsGroup makes it), its environment only
    cache = root / "model-store"
    cache.mkdir()
    os.chown(cache, 0, op.GROUP_ID)
    cache.chmod(0o2775)
    env = [a for k, v in op.caching_job_env().items() for a in ("-e", f"{k}={v}")]
    job = _podman("run", "--rm", *PODMAN_RUN, *env, "-v", f"{cache}:{op.CACHE_PATH}", "--entrypoint",
                  "download-to-cache", tag, *op.caching_job_args([fp32]), timeout=600)
    assert job.returncode == 0, job.stderr
    assert job.stdout.startswith(f"{fp32} (onnxruntime-fp32-throughput): downloaded")

    # NIMService: the image's entrypoint, the operator's environment, the cache read-only
    subprocess.run(["chmod", "-R", "a-w", str(cache)], check=True)
    port, name = free_port(), f"runtime-min-test-{os.getpid()}"
    env = [a for k, v in op.nimservice_env(port, profile=fp32).items() for a in ("-e", f"{k}={v}")]
    started = _podman("run", "-d", "--name", name, *PODMAN_RUN, *env, "--shm-size", "256m",
                      "-v", f"{cache}:{op.CACHE_PATH}:ro", tag, timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert _podman("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true", \
                _podman("logs", name).stderr[-3000:]
            time.sleep(0.5)
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"model": "minilm-embed", "input": ["a pod"]},
                           timeout=60)
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["data"][0]["embedding"]) == 384
    finally:
        _podman("stop", "-t", "30", name, timeout=90)  # killing the client would not stop the container
        logs = _podman("logs", name).stderr
        exit_code = _podman("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()
        _podman("rm", "-f", name)
    assert exit_code == "0", logs[-3000:]
    records = [json.loads(line) for line in logs.splitlines()]  # NIM_JSONL_LOGGING=1
    assert any(r["message"].startswith(f"Selected profile: {fp32}") for r in records)
    assert any("found in the cache" in r["message"] for r in records)


def test_a_modelcar_image_runs_kserves_own_commands(tmp_path):
    """`publish --images modelcar` under podman, with the commands KServe gives its modelcar
    (kserve/kserve pkg/utils/storage.go at aaac4e29, CreateModelcarInitContainer and modelcarCommand):
    the init container's check that /models is there and not empty, then the sidecar's
    `ln -sf /proc/$$/root/models /mnt/models && sleep infinity`, read from outside through that link
    as the predictor reads it (a shared process namespace: --pid host here)."""
    from helpers.registry import assert_pulled_exactly, make_release
    from helpers.servers import Registry
    from nimbuild.registry import publish
    from nimbuild.util.progress import Reporter

    require("podman")
    require("runc")
    if os.geteuid() != 0:
        pytest.skip("podman's runc runtime needs root here")
    manifest = make_release(tmp_path / "out")
    profile = manifest.profiles[0]
    server = Registry(tmp_path / "registry")
    name = f"nimbuild-modelcar-{os.getpid()}"
    image = f"{server.host}/acme/demo:1.0-{profile.id[:12]}-image"
    try:
        publish(tmp_path / "out", f"oci://{server.host}/acme", Reporter(quiet=True), images="modelcar")
        pulled = _podman("pull", "--tls-verify=false", image, timeout=300)
        assert pulled.returncode == 0, pulled.stderr[-2000:]
        init = _podman("run", "--rm", *PODMAN_RUN, image, "sh", "-c",
                       "echo 'Pre-fetching modelcar: ' && [ -d /models ] && [ \"$(ls -A /models)\" ] && "
                       "echo 'OK ... Prefetched and valid (/models exists)' || "
                       "(echo 'NOK ... Prefetched but modelcar is invalid' && exit 1)", timeout=120)
        assert init.returncode == 0 and "OK ... Prefetched and valid" in init.stdout, init.stdout + init.stderr
        volume = tmp_path / "mnt"
        volume.mkdir()
        started = _podman("run", "-d", "--name", name, *PODMAN_RUN, "--pid", "host", "-v", f"{volume}:/mnt", image,
                          "sh", "-c", "ln -sf /proc/$$/root/models /mnt/models && sleep infinity", timeout=120)
        assert started.returncode == 0, started.stderr[-2000:]
        deadline = time.monotonic() + 30
        while not (volume / "models" / "profiles.yaml").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert os.readlink(volume / "models").startswith("/proc/") and os.readlink(volume / "models").endswith(
            "/root/models")
        assert_pulled_exactly(volume / "models", manifest, only={profile.description})
    finally:
        _podman("rm", "-f", "-t", "0", name, timeout=90)
        _podman("rmi", "-f", image, timeout=90)
        server.stop()
