"""Text-generation profiles in Triton: one decoupled Python model (one response per token).

Generic profiles: model.py owns a continuous-batching generator over the KV-cache graph
(onnxruntime); its `max_batch_size` caps that batch, and the dynamic batcher hands over requests
that arrive together. The generation loop owns the KV cache, so the graph never runs as a native
backend model. TensorRT-LLM profiles: trtllm_model.py runs the engine through the LLM API, with the
same inputs and outputs, so the same front end serves both.
"""

from __future__ import annotations

from pathlib import Path

from runtime_min.deploy.config import Model, Tensor, dynamic_batching, instances, new_config, parameters
from runtime_min.tasks import serving, serving_code

HERE = Path(__file__).parent


def refuses(core) -> str | None:
    if core.native:
        return "the generation loop owns the KV cache, so the graph runs inside its Python model"
    if core.runner not in ("onnxruntime", "tensorrt_llm"):
        return f"text generation runs on onnxruntime or TensorRT-LLM, not {core.runner}"
    return None


def models(name: str, info: dict, core, workspace: Path) -> list[Model]:
    batch, delay = serving(info)
    runtime = info.get("runtime") or {}
    if core.runner != "tensorrt_llm":
        batch = max(1, min(batch, int(runtime.get("max_batch") or 1)))
    inputs = [Tensor("input_ids", "int64", [-1], ragged=True), Tensor("max_tokens", "int32", [1]),
              Tensor("temperature", "float32", [1], optional=True), Tensor("top_p", "float32", [1], optional=True),
              Tensor("seed", "int64", [1], optional=True), Tensor("stop", "string", [-1], optional=True, ragged=True),
              Tensor("ignore_eos", "bool", [1], optional=True),
              # the other sampling controls, as JSON by SamplingParams' names (routes: body.controls())
              Tensor("sampling", "string", [1], optional=True),
              # the runtime's stop: end every sequence now (routes.stop_generations)
              Tensor("stop_all", "bool", [1], optional=True)]
    outputs = [Tensor("token_id", "int64", [1]), Tensor("text", "string", [1]), Tensor("finish_reason", "string", [1]),
               # only where the request asked for logprobs
               Tensor("logprob", "float32", [1]), Tensor("top_ids", "int64", [-1]), Tensor("top_logprobs", "float32", [-1])]
    config = new_config(name, batch, inputs, outputs, backend="python")
    config.model_transaction_policy.decoupled = True
    dynamic_batching(config, delay)
    instances(config, gpu=core.gpu)
    parameters(config, core=core.file)
    files = {"model_info.json": workspace / "model_info.json", "tokenizer": workspace / "tokenizer"}
    if core.runner == "tensorrt_llm":
        files.update({"model.py": HERE / "trtllm_model.py", core.file: workspace / core.file})
    else:
        files.update({"model.py": HERE / "model.py", **serving_code(),
                      **core.python_files()})
    return [Model(config, files)]


def add_routes(app, served, triton, state, metrics) -> None:
    from runtime_min.tasks.llm.routes import add_routes as add

    add(app, served, triton, state, metrics)
