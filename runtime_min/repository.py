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
    writers = {"embedding": ("embedding.py", config_pbtxt), "text-generation": ("llm.py", llm_config_pbtxt)}
    if info.get("task") not in writers:
        raise NimbuildError(f"runtime_min serves {' and '.join(writers)} profiles; this one is {info.get('task')!r}")
    backend, write_config = writers[info["task"]]
    model_dir = repository / model_name
    shutil.rmtree(model_dir, ignore_errors=True)
    (model_dir / "1").mkdir(parents=True)
    shutil.copyfile(BACKENDS / backend, model_dir / "1" / "model.py")
    (model_dir / "config.pbtxt").write_text(write_config(model_name, info, workspace))
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


def llm_config_pbtxt(model_name: str, info: dict, workspace: Path) -> str:
    """A decoupled model (one response per token). Its own Generator batches running sequences;
    max_batch_size caps that batch, and the dynamic batcher hands over requests that arrive together."""
    serving = info.get("serving") or {}
    runtime = info.get("runtime") or {}
    max_batch = max(1, min(int(serving.get("max_batch_size") or 1), int(runtime.get("max_batch") or 1)))
    delay = int((serving.get("dynamic_batching") or {}).get("max_queue_delay_us", 0))
    return (
        f'name: "{model_name}"\n'
        'backend: "python"\n'
        f"max_batch_size: {max_batch}\n"
        "model_transaction_policy { decoupled: true }\n"
        "input [\n"
        '  { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] allow_ragged_batch: true },\n'
        '  { name: "max_tokens" data_type: TYPE_INT32 dims: [ 1 ] },\n'
        '  { name: "temperature" data_type: TYPE_FP32 dims: [ 1 ] optional: true },\n'
        '  { name: "top_p" data_type: TYPE_FP32 dims: [ 1 ] optional: true },\n'
        '  { name: "seed" data_type: TYPE_INT64 dims: [ 1 ] optional: true },\n'
        '  { name: "stop" data_type: TYPE_STRING dims: [ -1 ] optional: true allow_ragged_batch: true }\n'
        "]\n"
        "output [\n"
        '  { name: "token_id" data_type: TYPE_INT64 dims: [ 1 ] },\n'
        '  { name: "text" data_type: TYPE_STRING dims: [ 1 ] },\n'
        '  { name: "finish_reason" data_type: TYPE_STRING dims: [ 1 ] }\n'
        "]\n"
        f"dynamic_batching {{ max_queue_delay_microseconds: {delay} }}\n"
        "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
        f'parameters {{ key: "workspace" value {{ string_value: "{workspace.resolve()}" }} }}\n'
    )
