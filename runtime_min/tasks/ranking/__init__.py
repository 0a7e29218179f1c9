"""Ranking profiles in Triton: one Python model `<model>`, dynamically batched, that takes
query-passage pairs' token ids (ragged: each request its own pairs, unpadded) and answers one
relevance logit per pair. The pairs of every request Triton's batcher hands over run through the
core network in one padded batch (onnxruntime or a TensorRT-RTX engine in the model, or
`<model>-core` on a native backend through BLS).

The API (routes.py, NIM's `POST /v1/ranking`) tokenises the pairs and sorts the logits; clients
that call Triton directly send `input_ids`, `attention_mask` (and `token_type_ids` where the model
has them), [pairs, tokens] each, and read `logits` [pairs, 1].
"""

from __future__ import annotations

from pathlib import Path

from runtime_min.deploy.config import Model, Tensor, dynamic_batching, instances, new_config, parameters
from runtime_min.tasks import serving, tensor_dims

HERE = Path(__file__).parent


def refuses(core) -> str | None:
    return None


def models(name: str, info: dict, core, workspace: Path) -> list[Model]:
    batch, delay = serving(info)
    batch = core.batch(batch)
    inputs = [Tensor(i["name"], i.get("dtype", "int64"), [-1]) for i in info["inputs"]]
    logits = Tensor("logits", "float32", [1])
    config = new_config(name, batch, [Tensor(t.name, t.dtype, t.dims, ragged=True) for t in inputs], [logits],
                        backend="python")
    dynamic_batching(config, delay)
    instances(config, gpu=core.gpu and not core.native)
    parameters(config, runner=core.python_runner(name), core=core.file)
    files = {"model.py": HERE / "model.py", "model_info.json": workspace / "model_info.json", **core.python_files()}
    out = [Model(config, files)]
    if core.native:
        core_out = [Tensor(o["name"], o.get("dtype", "float32"), tensor_dims(o.get("shape") or ["batch", 1]))
                    for o in info["outputs"][:1]]
        out.append(core.native_model(name, inputs, core_out, batch, delay))
    return out


def add_routes(app, served, triton, state, metrics) -> None:
    from runtime_min.tasks.ranking.routes import add_routes as add

    add(app, served, triton, state, metrics)
