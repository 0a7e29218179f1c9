"""Write a Triton model repository for one profile's workspace."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from nimbuild.errors import NimbuildError

BACKENDS = Path(__file__).parent / "backends"


def write_repository(model_name: str, workspace: Path, repository: Path) -> dict:
    """`repository/<model>/{config.pbtxt,1/model.py}`; returns the workspace's model_info."""
    info_path = workspace / "model_info.json"
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as e:
        raise NimbuildError(f"{info_path}: cannot read the profile's model_info.json: {e}") from None
    if info.get("task") != "embedding":
        raise NimbuildError(f"runtime_min serves embedding profiles; this one is {info.get('task')!r}")
    model_dir = repository / model_name
    shutil.rmtree(model_dir, ignore_errors=True)
    (model_dir / "1").mkdir(parents=True)
    shutil.copyfile(BACKENDS / "embedding.py", model_dir / "1" / "model.py")
    (model_dir / "config.pbtxt").write_text(config_pbtxt(model_name, info, workspace))
    return info


def config_pbtxt(model_name: str, info: dict, workspace: Path) -> str:
    serving = info.get("serving") or {}
    inputs = "\n".join(
        f'  {{ name: "{i["name"]}" data_type: TYPE_INT64 dims: [ -1 ] allow_ragged_batch: true }},'
        for i in info["inputs"]
    ).rstrip(",")
    batching = serving.get("dynamic_batching")
    dynamic = (f"dynamic_batching {{ max_queue_delay_microseconds: {int(batching.get('max_queue_delay_us', 0))} }}\n"
               if batching is not None else "dynamic_batching { }\n")
    return (
        f'name: "{model_name}"\n'
        'backend: "python"\n'
        f"max_batch_size: {int(serving.get('max_batch_size', 8))}\n"
        f"input [\n{inputs}\n]\n"
        'output [ { name: "embeddings" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        + dynamic +
        "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
        f'parameters {{ key: "workspace" value {{ string_value: "{workspace.resolve()}" }} }}\n'
    )
