"""nim_list_model_profiles: start time against a bare interpreter, and cost as manifests grow."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import table

BIN = Path(sys.executable).parent


def synthetic_manifest(count: int):
    """`count` profiles across backends, capabilities, precisions, tp and profiles, 96 per model."""
    from nimbuild.profiles.manifest import Manifest, Profile, WorkspaceFile

    combos = list(itertools.product(
        ("tensorrt", "tensorrt_rtx"), ("8.0", "8.6", "8.9", "9.0", "10.0", "12.0"),
        ("fp8", "fp16", "bf16", "int8"), ("1", "2"), ("throughput", "latency")))[:96]
    profiles = []
    for i in range(count):
        backend, cc, precision, tp, mode = combos[i % len(combos)]
        tags = {"backend": backend, "type": "prebuilt", "precision": precision, "compute_capability": cc,
                "trt_version": "10.13.0", "profile": mode, "tp": tp}
        digest = "sha256:" + hashlib.sha256(str(i).encode()).hexdigest()
        files = {"model.plan": WorkspaceFile(f"profiles/{i}/model.plan", digest, 1000 + i)}
        profiles.append(Profile.create(f"model-{i // len(combos)}", "1.0", tags, files,
                                       requires={"min_compute_capability": cc}))
    return Manifest(profiles)


def _wall(cmd: list[str], env: dict, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def main() -> str:
    from nimbuild.profiles.nim import read_profiles
    from nimbuild.profiles.select import select_profile
    from nimbuild.profiles.system import system_from_dict

    tmp = Path(tempfile.mkdtemp())
    system_file = tmp / "system.json"
    system_file.write_text(json.dumps({"gpus": [{"product": "L40S"}], "runtimes": {"tensorrt": "10.13.0"}}))
    env = {**os.environ, "NIMBUILD_SYSTEM": str(system_file)}
    small = tmp / "small.yaml"
    synthetic_manifest(10).save(small)
    bare = _wall([sys.executable, "-c", "pass"], env, 15)
    start_rows = [
        ["python -c pass", bare, 1.0],
        ["nim_list_model_profiles --help", _wall([str(BIN / "nim_list_model_profiles"), "--help"], env, 15), None],
        ["nim_list_model_profiles (10 profiles)", _wall([str(BIN / "nim_list_model_profiles"), "-m", str(small)], env, 15), None],
        ["nimbuild --help", _wall([str(BIN / "nimbuild"), "--help"], env, 15), None],
    ]
    for row in start_rows[1:]:
        row[2] = row[1] / bare
    system = system_from_dict(json.loads(system_file.read_text()))
    scale_rows = []
    for count in (100, 1000, 10000):
        path = tmp / f"m{count}.yaml"
        synthetic_manifest(count).save(path)
        t0 = time.perf_counter()
        profiles = read_profiles(path).profiles
        t1 = time.perf_counter()
        selection = select_profile(profiles, system, {})
        t2 = time.perf_counter()
        assert selection.selected is not None
        cli = _wall([str(BIN / "nim_list_model_profiles"), "-m", str(path), "--format", "json"], env, 3)
        scale_rows.append([count, (t1 - t0) * 1e3, (t2 - t1) * 1e3, cli, cli / count * 1e3])
    return "\n\n".join([
        table("CLI start (median wall ms, 15 runs)", ["command", "ms", "x python -c pass"],
              [[r[0], r[1], r[2]] for r in start_rows]),
        table("List/select cost as the manifest grows (ms)",
              ["profiles", "read+verify ids", "select", "CLI total (json)", "CLI us/profile"], scale_rows),
    ])


if __name__ == "__main__":
    print(main())
