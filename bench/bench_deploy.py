"""RMIR at first start: how long the archive takes to become an engine and a model repository for
the detected GPU (simulated here as an A10, compute capability 8.6: TensorRT-RTX builds its engine
on this CPU), against a start that finds the engine in the cache, and against writing the
repository of a generic profile (no engine to build), each a full `create-model-store` process."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import table

REPO = Path(__file__).resolve().parents[1]
NIMBUILD = str(Path(sys.executable).parent / "nimbuild")


def _store(manifest: Path, profile: str, cache: Path, system: Path) -> float:
    store = Path(tempfile.mkdtemp(prefix="store-", dir=cache.parent))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "runtime_min", "create-model-store", "--profile", profile,
                    "--model-store", str(store), "--manifest", str(manifest)], check=True, capture_output=True,
                   env={**os.environ, "NIM_CACHE_PATH": str(cache), "NIMBUILD_SYSTEM": str(system)})
    return time.perf_counter() - start


def main() -> str:
    work = Path(tempfile.mkdtemp(prefix="nimbuild-bench-deploy-"))
    out = work / "out"
    # the example's generic fp16 and RMIR targets only (targets 0 and 4): both carry the same fp16 graph
    subprocess.run([NIMBUILD, "-q", "compile", str(REPO / "examples" / "minilm-embed" / "recipe.yaml"), "--out", str(out),
                    "--target", "0", "--target", "4", "--precision", "fp16"], check=True, capture_output=True)
    system = work / "a10.json"
    system.write_text(json.dumps({"gpus": [{"product": "A10"}]}))
    manifest = out / "profiles.yaml"
    rows = []
    for run in range(3):  # each round a fresh cache: the first start builds, the next ones reuse
        cache = work / f"cache-{run}"
        first = _store(manifest, "rmir-fp16-throughput", cache, system)
        hits = [_store(manifest, "rmir-fp16-throughput", cache, system) for _ in range(3)]
        generic = [_store(manifest, "onnxruntime-fp16-throughput", cache, system) for _ in range(3)]
        rows.append([run + 1, first, statistics.median(hits), statistics.median(generic)])
    first = statistics.median(r[1] for r in rows)
    hit = statistics.median(r[2] for r in rows)
    rows.append(["median", first, hit, statistics.median(r[3] for r in rows)])
    rows.append(["first start / cache hit", first / hit, "", ""])
    return table("MiniLM fp16 RMIR -> TRT-RTX engine (sm86) + repository at first start vs cache hit, seconds "
                 "(whole create-model-store process)", ["round", "first start", "cache hit", "generic profile"], rows)


if __name__ == "__main__":
    print(main())
