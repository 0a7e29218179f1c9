"""Translation profiles in Triton: one Python model `<model>`, dynamically batched, that takes one
text's source tokens and answers its translation's tokens: the encoder (the core: onnxruntime, a
TensorRT-RTX engine on a GPU, or `<model>-core` on a native backend through BLS) over the batch's
sources together, then greedy decoding with the KV-cache decoder graph on onnxruntime
(nimbuild/serving/seq2seq.py, the loop the build checked against transformers.generate).

The front end (riva.py, Riva's RivaTranslation) tokenises, puts placeholders in for phrases kept
untranslated, and decodes (nimbuild/serving/translation_text.py) outside Triton, so bad text is an
INVALID_ARGUMENT before anything is queued, and each text is one Triton request: the texts of one
call and of concurrent calls share batches.
"""

from __future__ import annotations

from pathlib import Path

from runtime_min.deploy.config import Model, Tensor, dynamic_batching, instances, new_config, parameters
from runtime_min.tasks import batch_within_export, serving_code, tensor_dims

HERE = Path(__file__).parent


def refuses(core) -> str | None:
    return None


def models(name: str, info: dict, core, workspace: Path) -> list[Model]:
    batch, delay = batch_within_export(info, core)
    inputs = [Tensor("input_ids", "int64", [-1], ragged=True), Tensor("max_tokens", "int32", [1])]
    config = new_config(name, batch, inputs, [Tensor("output_ids", "int64", [-1])], backend="python")
    dynamic_batching(config, delay)
    instances(config, gpu=core.gpu and not core.native)
    parameters(config, runner=core.python_runner(name), core=core.file)
    files = {"model.py": HERE / "model.py", "model_info.json": workspace / "model_info.json",
             "translation": workspace / "translation", **serving_code(),
             **core.python_files()}
    out = [Model(config, files)]
    if core.native:
        core_in = [Tensor(i["name"], "int64", [-1]) for i in info["inputs"]]
        core_out = [Tensor(o["name"], "float32", tensor_dims(o["shape"])) for o in info["outputs"]]
        out.append(core.native_model(name, core_in, core_out, batch, delay))
    return out


def add_routes(app, served, triton, state, metrics) -> None:
    """Riva Translate is a gRPC API (riva.py); HTTP has the runtime's health, models and metrics."""


def add_servicers(server, served, triton, state) -> None:
    """Riva's RivaTranslation on the gRPC front end."""
    from runtime_min.tasks.translation.riva import add_servicers as add

    add(server, served, triton, state)
