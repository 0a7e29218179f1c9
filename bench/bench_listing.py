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
from nimbuild.profiles.index import index_path

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


def main() -> tuple[str, dict]:
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
    scale_rows, data = [], {"cli_start_ms": {r[0]: r[1] for r in start_rows}, "scale": []}
    for count in (100, 1000, 10000):
        path = tmp / f"m{count}.yaml"
        synthetic_manifest(count).save(path)
        stages = _stages(path, system)
        listing = [str(BIN / "nim_list_model_profiles"), "-m", str(path), "--format", "json"]
        cli = _wall(listing, env, 3)
        twin = index_path(path)
        twin.rename(twin.with_suffix(".aside"))  # the same listing from the YAML alone, as before the twin
        cli_yaml = _wall(listing, env, 3)
        twin.with_suffix(".aside").rename(twin)
        scale_rows.append([count, stages["pyyaml_load"], stages["read_yaml_path"], stages["read"], stages["select"],
                           cli_yaml, cli, cli / count * 1e3])
        data["scale"].append({"profiles": count, "cli_ms": cli, "cli_yaml_only_ms": cli_yaml, **stages})
    where = data["scale"][-1]
    where_rows = [
        ["without the twin: libyaml events only (PyYAML's floor)", where["libyaml_events"]],
        ["without the twin: compose the node graph (libyaml, C)", where["compose"]],
        ["without the twin: build values (aliases, depth, duplicate keys)", where["read_yaml"] - where["compose"]],
        ["read the JSON twin and check it names the YAML's digest", where["read_twin"]],
        ["check ids, digests, paths; make profiles", where["read"] - where["read_twin"]],
        ["select", where["select"]],
        ["write the JSON listing", where["emit"]],
    ]
    text = "\n\n".join([
        table("CLI start (median wall ms, 15 runs)", ["command", "ms", "x python -c pass"],
              [[r[0], r[1], r[2]] for r in start_rows]),
        table("List/select cost as the manifest grows (ms; the goal for 10,000 is a 400 ms CLI)",
              ["profiles", "yaml.load alone", "read+verify (YAML)", "read+verify (twin)", "select",
               "CLI, YAML only", "CLI (json)", "CLI us/profile"], scale_rows),
        table("Where a 10,000-profile listing's time goes (ms, in process)", ["stage", "ms"], where_rows),
    ])
    return text, data


def _stages(path: Path, system) -> dict[str, float]:
    """Each stage of the listing timed on its own (best of 3: this machine is shared)."""
    import gc

    import orjson
    import yaml

    from nimbuild.profiles import listing
    from nimbuild.profiles.index import read_index
    from nimbuild.profiles.nim import parse_profiles, read_profiles
    from nimbuild.profiles.select import select_profile
    from nimbuild.util.yamlsafe import _Composer, load_yaml

    text = path.read_text()

    def best(call) -> float:
        samples = []
        for _ in range(3):
            gc.collect()
            start = time.perf_counter()
            call()
            samples.append((time.perf_counter() - start) * 1e3)
        return min(samples)

    def paused(call):  # nimbuild reads with the cyclic GC paused; time the alternatives the same way
        def timed():
            gc.disable()
            try:
                call()
            finally:
                gc.enable()
        return timed

    def pyyaml_load():  # what nimbuild did before its own loader
        yaml.load(text, Loader=yaml.CSafeLoader)

    def events():
        for _ in yaml.parse(text, Loader=yaml.CSafeLoader):
            pass

    profiles = read_profiles(path).profiles
    selection = select_profile(profiles, system, {})
    assert selection.selected is not None
    return {
        "libyaml_events": best(paused(events)),
        "compose": best(paused(lambda: yaml.compose(text, Loader=_Composer))),
        "pyyaml_load": best(paused(pyyaml_load)),
        "read_yaml": best(lambda: load_yaml(text)),
        "read_twin": best(paused(lambda: read_index(path, path.read_text()))),
        "read": best(lambda: read_profiles(path)),
        "read_yaml_path": best(lambda: parse_profiles(text, str(path))),
        "select": best(lambda: select_profile(profiles, system, {})),
        "emit": best(lambda: orjson.dumps(listing.as_json(system, selection), option=orjson.OPT_INDENT_2)),
    }


if __name__ == "__main__":
    print(main()[0])
