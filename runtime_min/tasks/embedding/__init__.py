"""Embedding profiles in Triton.

A core run inside Python (onnxruntime, TensorRT-RTX) is one dynamically batched Python model that
pads the ragged batch, runs the network and pools (model.py, stage `embed`): one hop. A core on a
native backend is an ensemble: `<model>-core` (token ids -> last hidden state) then `<model>-pool`
(hidden state and attention mask -> pooled, normalised embeddings).
"""

from __future__ import annotations

from pathlib import Path

from runtime_min.deploy.config import Model, Tensor, dynamic_batching, ensemble, instances, new_config, parameters
from runtime_min.tasks import serving, serving_code, tensor_dims

MODEL = Path(__file__).with_name("model.py")


def refuses(core) -> str | None:
    return None


def core_io(info: dict) -> tuple[list[Tensor], list[Tensor]]:
    inputs = [Tensor(i["name"], i.get("dtype", "int64"), [-1]) for i in info["inputs"]]
    outputs = [Tensor(o["name"], o.get("dtype", "float32"), tensor_dims(o.get("shape") or ["batch", -1, -1]))
               for o in info["outputs"][:1]]
    return inputs, outputs


def models(name: str, info: dict, core, workspace: Path) -> list[Model]:
    batch, delay = serving(info)
    batch = core.batch(batch)
    inputs, outputs = core_io(info)
    embeddings = Tensor("embeddings", "float32", [-1])
    files = {"model.py": MODEL, "model_info.json": workspace / "model_info.json", **serving_code()}
    if not core.native:
        config = new_config(name, batch, [Tensor(t.name, t.dtype, t.dims, ragged=True) for t in inputs], [embeddings],
                            backend="python")
        dynamic_batching(config, delay)
        instances(config, gpu=core.gpu)
        parameters(config, stage="embed", runner=core.runner, core=core.file)
        return [Model(config, {**files, **core.python_files()})]
    hidden = outputs[0]
    pool = new_config(f"{name}-pool", batch, [Tensor(hidden.name, hidden.dtype, hidden.dims, ragged=True),
                                              Tensor("attention_mask", "int64", [-1], ragged=True)],
                      [embeddings], backend="python")
    dynamic_batching(pool, delay)
    instances(pool, gpu=False)
    parameters(pool, stage="pool")
    steps = [(f"{name}-core", {t.name: t.name for t in inputs}, {hidden.name: "_hidden"}),
             (f"{name}-pool", {hidden.name: "_hidden", "attention_mask": "attention_mask"}, {"embeddings": "embeddings"})]
    return [core.native_model(name, inputs, outputs, batch, delay), Model(pool, files),
            Model(ensemble(name, batch, inputs, [embeddings], steps))]


def add_routes(app, served, triton, state, metrics) -> None:
    from runtime_min.tasks.embedding.routes import add_routes as add

    add(app, served, triton, state, metrics)
