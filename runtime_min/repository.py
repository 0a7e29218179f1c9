"""Write a Triton model repository for one profile's workspace."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from nimbuild.errors import NimbuildError

BACKENDS = Path(__file__).parent / "backends"


def write_repository(model_name: str, workspace: Path, repository: Path, mode: str | None = None) -> dict:
    """`repository/<model>/{config.pbtxt,1/model.py}` (speech: several models, see asr_models);
    returns the workspace's model_info with the speech `mode` it is served in."""
    info_path = workspace / "model_info.json"
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as e:
        raise NimbuildError(f"{info_path}: cannot read the profile's model_info.json: {e}") from None
    writers = {"embedding": ("embedding.py", config_pbtxt), "text-generation": ("llm.py", llm_config_pbtxt)}
    if info.get("task") == "asr-ctc":
        info["mode"] = mode or "ofl"
        for name, (backend, config) in asr_models(model_name, info, workspace).items():
            _write_model(repository / name, backend, config)
        return info
    if info.get("task") not in writers:
        raise NimbuildError(f"runtime_min serves {', '.join(writers)} and asr-ctc profiles; this one is {info.get('task')!r}")
    backend, write_config = writers[info["task"]]
    _write_model(repository / model_name, backend, write_config(model_name, info, workspace))
    return info


def _write_model(model_dir: Path, backend: str | None, config: str) -> None:
    shutil.rmtree(model_dir, ignore_errors=True)
    (model_dir / "1").mkdir(parents=True)
    if backend:
        shutil.copyfile(BACKENDS / backend, model_dir / "1" / "model.py")
    (model_dir / "config.pbtxt").write_text(config)


def stream_model_name(model_name: str) -> str:
    return f"{model_name}-stream"


def asr_models(model_name: str, info: dict, workspace: Path) -> dict[str, tuple[str | None, str]]:
    """Offline: an ensemble `<model>` of `<model>-features` -> `<model>-encoder` -> `<model>-decoder`,
    each dynamically batched. Streaming profiles add `<model>-stream`, sequence-batched."""
    serving = info.get("serving") or {}
    batch = max(1, int(serving.get("max_batch_size") or 1))
    delay = int((serving.get("dynamic_batching") or {}).get("max_queue_delay_us", 0))
    vocab = len(json.loads((workspace / info["runtime"]["vocabulary"]).read_text())["tokens"]) + 1
    features = int(info["runtime"]["features"]["features"])

    def python_model(name: str, stage: str, inputs: str, outputs: str, batching: str) -> str:
        return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: {batch}\n'
                f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n{batching}"
                "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
                f'parameters {{ key: "workspace" value {{ string_value: "{workspace.resolve()}" }} }}\n'
                f'parameters {{ key: "stage" value {{ string_value: "{stage}" }} }}\n')

    dynamic = f"dynamic_batching {{ max_queue_delay_microseconds: {delay} }}\n"
    text_out = '  { name: "text" data_type: TYPE_STRING dims: [ 1 ] }'
    models = {
        f"{model_name}-features": ("asr.py", python_model(
            f"{model_name}-features", "features",
            '  { name: "audio" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true }',
            f'  {{ name: "audio_signal" data_type: TYPE_FP32 dims: [ {features}, -1 ] }},\n'
            '  { name: "length" data_type: TYPE_INT64 dims: [ 1 ] }', dynamic)),
        f"{model_name}-encoder": ("asr.py", python_model(
            f"{model_name}-encoder", "encoder",
            f'  {{ name: "audio_signal" data_type: TYPE_FP32 dims: [ {features}, -1 ] allow_ragged_batch: true }},\n'
            '  { name: "length" data_type: TYPE_INT64 dims: [ 1 ] }',
            f'  {{ name: "logprobs" data_type: TYPE_FP32 dims: [ -1, {vocab} ] }}', dynamic)),
        f"{model_name}-decoder": ("asr.py", python_model(
            f"{model_name}-decoder", "decoder",
            f'  {{ name: "logprobs" data_type: TYPE_FP32 dims: [ -1, {vocab} ] allow_ragged_batch: true }}',
            text_out, dynamic)),
        model_name: (None, _ensemble(model_name, batch)),
    }
    if info["mode"] == "str":
        sequence = (
            "sequence_batching {\n  max_sequence_idle_microseconds: 60000000\n"
            f"  oldest {{ max_candidate_sequences: {4 * batch} max_queue_delay_microseconds: {delay} }}\n"
            "  control_input [\n"
            '    { name: "START" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ] },\n'
            '    { name: "END" control [ { kind: CONTROL_SEQUENCE_END fp32_false_true: [ 0, 1 ] } ] },\n'
            '    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }\n'
            "  ]\n}\n")
        name = stream_model_name(model_name)
        models[name] = ("asr.py", python_model(
            name, "stream", '  { name: "audio_chunk" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true }',
            text_out, sequence))
    return models


def _ensemble(model_name: str, batch: int) -> str:
    def step(model: str, inputs: dict, outputs: dict) -> str:
        maps = "".join(f' input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
        maps += "".join(f' output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
        return f'    {{ model_name: "{model}" model_version: -1{maps} }}'

    steps = ",\n".join([
        step(f"{model_name}-features", {"audio": "audio"}, {"audio_signal": "_features", "length": "_length"}),
        step(f"{model_name}-encoder", {"audio_signal": "_features", "length": "_length"}, {"logprobs": "_logprobs"}),
        step(f"{model_name}-decoder", {"logprobs": "_logprobs"}, {"text": "text"}),
    ])
    return (f'name: "{model_name}"\nplatform: "ensemble"\nmax_batch_size: {batch}\n'
            'input [ { name: "audio" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
            'output [ { name: "text" data_type: TYPE_STRING dims: [ 1 ] } ]\n'
            f"ensemble_scheduling {{\n  step [\n{steps}\n  ]\n}}\n")


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
