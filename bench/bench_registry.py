"""Registry transfers: push and pull of a release with a 500 MB file, against copying and hashing
the same bytes on this disk (the raw speed), with each transfer's peak memory."""

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

CHILD = """
import sys, time
from pathlib import Path
from nimbuild.progress import Reporter
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


def _release(out: Path) -> None:
    from nimbuild.profiles.manifest import Manifest, Profile, WorkspaceFile

    path = out / "profiles" / "onnxruntime-fp32-throughput" / "model.onnx"
    path.parent.mkdir(parents=True)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(SIZE >> 22):
            block = os.urandom(1 << 22)
            digest.update(block)
            f.write(block)
    files = {"model.onnx": WorkspaceFile(path.relative_to(out).as_posix(), "sha256:" + digest.hexdigest(), SIZE)}
    tags = {"backend": "onnxruntime", "type": "generic", "precision": "fp32"}
    Manifest([Profile.create("big", "1.0", tags, files)]).save(out / "profiles.yaml")


def _child(*args: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{args[0]} failed: {out.stderr[-1500:]}")
    seconds, rss_kib = out.stdout.split()
    return float(seconds), int(rss_kib) / 1024


def main() -> str:
    from servers import Registry

    tmp = Path(tempfile.mkdtemp(prefix="nimbuild-bench-", dir=os.environ.get("TMPDIR")))
    server = None
    try:
        out = tmp / "out"
        _release(out)
        source = out / "profiles/onnxruntime-fp32-throughput/model.onnx"
        from nimbuild.fsutil import sha256_file

        def raw_copy_and_hash() -> float:
            start = time.perf_counter()
            shutil.copyfile(source, tmp / "raw-copy")
            sha256_file(tmp / "raw-copy")
            (tmp / "raw-copy").unlink()
            return time.perf_counter() - start

        server = Registry(tmp / "registry")
        uri = f"oci://{server.host}/bench"
        # Medians of three: this disk's speed swings by 2x between runs.
        raw = statistics.median(raw_copy_and_hash() for _ in range(3))
        push = [_child("push", str(out), f"{uri}{i}") for i in range(3)]
        pull = [_child("pull", str(tmp / f"dest{i}"), f"{uri}0", str(tmp / f"cache{i}")) for i in range(3)]
        layout = [_child("push", str(out), str(tmp / f"layout{i}")) for i in range(3)]
        push_s, push_mb = statistics.median(p[0] for p in push), max(p[1] for p in push)
        pull_s, pull_mb = statistics.median(p[0] for p in pull), max(p[1] for p in pull)
        layout_push_s = statistics.median(p[0] for p in layout)
        mb = SIZE / 1e6
        rows = [
            ["copy + sha256 on this disk (raw)", raw, mb / raw, 1.0, "-"],
            ["push to docker-registry", push_s, mb / push_s, raw / push_s, f"{push_mb:.0f}"],
            ["pull from docker-registry (verified)", pull_s, mb / pull_s, raw / pull_s, f"{pull_mb:.0f}"],
            ["push to an OCI layout directory", layout_push_s, mb / layout_push_s, raw / layout_push_s, "-"],
        ]
        return table(f"Registry transfer of a {SIZE >> 20} MiB file (loopback, median of 3)",
                     ["transfer", "seconds", "MB/s", "x raw speed", "peak RSS MiB"], rows)
    finally:
        if server:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    print(main())
