"""Encoder-decoder speech profiles in Triton (Whisper, and Canary, whose folder serves with this
one's code): one Python model `<model>`, dynamically batched, that takes one
clip (16 kHz float audio, up to the profile's `max_seconds`: Whisper cuts a clip longer than its
window into overlapping windows) with its language and task and answers its transcript (and, for `mode: str` profiles, `<model>-stream`,
sequence-batched, which re-decodes each stream's audio so far after every chunk): the numpy front
end, the encoder (the core: onnxruntime, a TensorRT-RTX engine on a GPU, or `<model>-core` on a
native backend through BLS) over the batch's clips together, then greedy decoding with the KV-cache
decoder graph on onnxruntime (nimbuild/serving/whisper_asr.py or canary_asr.py: the loop the build
checked against transformers or NeMo).

One model rather than the CTC profiles' three-step ensemble: the decoder loop needs the encoder's
output for the whole batch at once, and a hop between Triton models per step would cost more than
the step. The HTTP and Riva front ends are speech recognition's (runtime_min/tasks/asr), which send
the language and task where the profile takes them.
"""

from __future__ import annotations

from pathlib import Path

from nimbuild.tasks import task
from runtime_min.deploy.config import Model, Tensor, dynamic_batching, instances, new_config, parameters
from runtime_min.tasks import batch_within_export, serving_code, tensor_dims
from runtime_min.tasks.asr import sequence_batching, stream_model_name

HERE = Path(__file__).parent


def refuses(core) -> str | None:
    return None


def models(name: str, info: dict, core, workspace: Path) -> list[Model]:
    batch, delay = batch_within_export(info, core)
    options = [Tensor(name, "string", [1], optional=True) for name in ("language", "task", "target_language")]
    outputs = [Tensor("text", "string", [1]), Tensor("words", "string", [1]), Tensor("language", "string", [1])]
    files = {"model.py": HERE / "model.py", "model_info.json": workspace / "model_info.json",
             **{folder: workspace / folder for folder in task(info["task"]).assets}, **serving_code(),
             **core.python_files()}

    def python(model: str, stage: str, audio: str) -> Model:
        config = new_config(model, batch, [Tensor(audio, "float32", [-1], ragged=True), *options], outputs,
                            backend="python")
        instances(config, gpu=core.gpu and not core.native)
        parameters(config, runner=core.python_runner(name), core=core.file, stage=stage)
        return Model(config, files)

    offline = python(name, "offline", "audio")
    dynamic_batching(offline.config, delay)
    out = [offline]
    if info.get("mode") == "str":  # sequence-batched: each stream's audio is re-decoded whole (model.py)
        stream = python(stream_model_name(name), "stream", "audio_chunk")
        sequence_batching(stream.config, batch, delay)
        out.append(stream)
    if core.native:
        # Whisper's input_features [batch, mels, frames], both fixed by the checkpoint; Canary's
        # audio_signal [batch, features, frames] with a length per row
        core_in = [Tensor(i["name"], i.get("dtype", "float32"),
                          [1] if len(i["dims"]) == 1 else [_fixed_or_any(i["shapes"][d]) for d in i["dims"][1:]],
                          scalar=len(i["dims"]) == 1) for i in info["inputs"]]
        core_out = [Tensor(o["name"], o.get("dtype", "float32"), tensor_dims(o["shape"]) or [1]) for o in info["outputs"]]
        out.append(core.native_model(name, core_in, core_out, batch, delay))
    return out


def _fixed_or_any(shape: list[int]) -> int:
    """A dimension's size in a Triton config: its size where the build fixed it, else -1."""
    return int(shape[0]) if shape[0] == shape[2] else -1


def add_routes(app, served, triton, state, metrics) -> None:
    from runtime_min.tasks.asr.routes import add_routes as add

    add(app, served, triton, state, metrics)


def add_servicers(server, served, triton, state) -> None:
    from runtime_min.tasks.asr.riva import add_servicers as add

    add(server, served, triton, state)
