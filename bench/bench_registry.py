"""Registry transfers: push and pull of a release with a 500 MB file, against copying and hashing
the same bytes on this disk (the raw speed) and against curl moving the same blob to and from the
same docker-registry (what the server allows a native client), with each transfer's peak memory
at two file sizes (it must not grow with the file)."""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import table

REPO = Path(__file__).resolve().parents[1]
SIZE = 500 << 20
SMALL = 48 << 20  # whole 4 MiB blocks

CHILD = """
import sys, time
from pathlib import Path
from nimbuild.util.progress import Reporter
from nimbuild.registry import publish, pull
from nimbuild.registry.cache import BlobCache
start = time.perf_counter()
if sys.argv[1] == "push":
    publish(Path(sys.argv[2]), sys.argv[3], Reporter(quiet=True))
else:
    pull("big:1.0", sys.argv[3], Reporter(quiet=True), dest=Path(sys.argv[2]), cache=BlobCache(Path(sys.argv[4])))
# VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across fork+exec, so a child of a runner
# that once held torch would report the runner's peak.
hwm = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(time.perf_counter() - start, hwm)
"""


def _release(out: Path, size: int = SIZE) -> None:
    from nimbuild.profiles.manifest import Manifest, Profile, WorkspaceFile

    path = out / "profiles" / "onnxruntime-fp32-throughput" / "model.onnx"
    path.parent.mkdir(parents=True)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(size >> 22):
            block = os.urandom(1 << 22)
            digest.update(block)
            f.write(block)
    files = {"model.onnx": WorkspaceFile(path.relative_to(out).as_posix(), "sha256:" + digest.hexdigest(), size)}
    tags = {"backend": "onnxruntime", "type": "generic", "precision": "fp32"}
    Manifest([Profile.create("big", "1.0", tags, files)]).save(out / "profiles.yaml")


def _child(*args: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{args[0]} failed: {out.stderr[-1500:]}")
    seconds, rss_kib = out.stdout.split()
    return float(seconds), int(rss_kib) / 1024


def _curl_push(host: str, repo: str, source: Path, digest: str) -> float:
    """The blob in one streamed PUT by curl: the least a client can do for the registry to take it."""
    import httpx

    start = time.perf_counter()
    location = httpx.post(f"http://{host}/v2/{repo}/blobs/uploads/").headers["Location"]
    location = location if location.startswith("http") else f"http://{host}{location}"
    subprocess.run(["curl", "-sf", "-o", "/dev/null", "-T", str(source), "-H", "Content-Type: application/octet-stream",
                    location + ("&" if "?" in location else "?") + f"digest={digest}"], check=True)
    return time.perf_counter() - start


def _curl_pull(host: str, repo: str, digest: str, dest: Path) -> float:
    """curl into a file and sha256sum over the same stream: a verified download by native tools."""
    start = time.perf_counter()
    subprocess.run(f"curl -sfL http://{host}/v2/{repo}/blobs/{digest} | tee {dest} | sha256sum >/dev/null",
                   shell=True, check=True)
    seconds = time.perf_counter() - start
    dest.unlink()
    return seconds


def main() -> tuple[str, dict]:
    from helpers.servers import Registry
    from nimbuild.util.files import sha256_file

    tmp = Path(tempfile.mkdtemp(prefix="nimbuild-bench-", dir=os.environ.get("TMPDIR")))
    server = None
    try:
        out = tmp / "out"
        _release(out)
        source = out / "profiles/onnxruntime-fp32-throughput/model.onnx"
        def raw_copy_and_hash() -> float:
            start = time.perf_counter()
            shutil.copyfile(source, tmp / "raw-copy")
            sha256_file(tmp / "raw-copy")
            (tmp / "raw-copy").unlink()
            return time.perf_counter() - start

        server = Registry(tmp / "registry")
        uri = f"oci://{server.host}/bench"
        digest = "sha256:" + sha256_file(source)
        # Medians of three: this disk's speed swings by 2x between runs.
        raw = statistics.median(raw_copy_and_hash() for _ in range(3))
        push = [_child("push", str(out), f"{uri}{i}") for i in range(3)]
        pull = [_child("pull", str(tmp / f"dest{i}"), f"{uri}0", str(tmp / f"cache{i}")) for i in range(3)]
        layout = [_child("push", str(out), str(tmp / f"layout{i}")) for i in range(3)]
        have_curl = shutil.which("curl") is not None
        if have_curl:
            curl_push = statistics.median(_curl_push(server.host, f"curl{i}/big", source, digest) for i in range(3))
            curl_pull = statistics.median(_curl_pull(server.host, "bench0/big", digest, tmp / "curl-out") for _ in range(3))
        small = tmp / "small"
        _release(small, SMALL)
        small_push = _child("push", str(small), f"{uri}-small")
        small_pull = _child("pull", str(tmp / "small-dest"), f"{uri}-small", str(tmp / "small-cache"))
        push_s, push_mb = statistics.median(p[0] for p in push), max(p[1] for p in push)
        pull_s, pull_mb = statistics.median(p[0] for p in pull), max(p[1] for p in pull)
        layout_push_s = statistics.median(p[0] for p in layout)
        mb = SIZE / 1e6
        rows = [
            ["copy + sha256 on this disk (raw)", raw, mb / raw, 1.0, "-", "-"],
            ["push to docker-registry", push_s, mb / push_s, raw / push_s,
             curl_push / push_s if have_curl else "-", f"{push_mb:.0f} ({small_push[1]:.0f})"],
            ["pull from docker-registry (verified)", pull_s, mb / pull_s, raw / pull_s,
             curl_pull / pull_s if have_curl else "-", f"{pull_mb:.0f} ({small_pull[1]:.0f})"],
            ["push to an OCI layout directory", layout_push_s, mb / layout_push_s, raw / layout_push_s, "-", "-"],
        ]
        if have_curl:
            rows += [["curl -T to the same registry (one PUT)", curl_push, mb / curl_push, raw / curl_push, 1.0, "-"],
                     ["curl | tee | sha256sum from it", curl_pull, mb / curl_pull, raw / curl_pull, 1.0, "-"]]
        text = table(f"Registry transfer of a {SIZE >> 20} MiB file (loopback, median of 3; peak RSS at "
                     f"{SIZE >> 20} MiB and, in brackets, at {SMALL >> 20} MiB)",
                     ["transfer", "seconds", "MB/s", "x raw speed", "x curl", "peak RSS MiB"], rows)
        data = {"bytes": SIZE, "raw_s": raw, "push_s": push_s, "pull_s": pull_s, "layout_push_s": layout_push_s,
                "curl_push_s": curl_push if have_curl else None, "curl_pull_s": curl_pull if have_curl else None,
                "push_rss_mib": {SIZE: push_mb, SMALL: small_push[1]}, "pull_rss_mib": {SIZE: pull_mb, SMALL: small_pull[1]}}
        return text, data
    finally:
        if server:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    print(main()[0])
