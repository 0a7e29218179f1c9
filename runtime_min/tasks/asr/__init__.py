"""Speech profiles (CTC, and RNNT/TDT transducers) in Triton, as Riva lays out its ASR repositories:
features -> acoustic model -> decoder.

Offline (`mode: ofl`): an ensemble `<model>` of `<model>-features` (Python: audio -> mel features),
the core network, and `<model>-decoder` (Python: CTC greedy decoding over the frames each
utterance's length allows; for a transducer, the greedy search over the encoder's frames with the
decoder-joint graph on onnxruntime), each dynamically batched. The core is `<model>-encoder`, a Python model
running it with its runner (onnxruntime, TensorRT-RTX), or `<model>-core` on a native backend.
Streaming (`mode: str`) adds `<model>-stream`, sequence-batched (correlation id, start/end flags, as
Triton's Kaldi ASR integration), which runs the core itself, or calls the native one through BLS.
"""

from __future__ import annotations

import json
from pathlib import Path

from runtime_min.deploy.config import Model, Tensor, dynamic_batching, ensemble, instances, new_config, parameters
from runtime_min.deploy.core import RUNNERS
from runtime_min.tasks import serving, serving_code, tensor_dims

MODEL = Path(__file__).with_name("model.py")


def stream_model_name(model_name: str) -> str:
    return f"{model_name}-stream"


def refuses(core) -> str | None:
    return None


def core_io(info: dict, vocab: int) -> tuple[list[Tensor], list[Tensor]]:
    """The acoustic model's bindings: audio_signal [features, frames] (and length, a scalar per row,
    when the graph takes it) -> logprobs [frames', vocab+1] (CTC), or a transducer encoder's
    outputs [hidden, frames'], as the graph lays them out."""
    features = int(info["runtime"]["features"]["features"])
    inputs = [Tensor("audio_signal", "float32", [features, -1])]
    if any(i["name"] == "length" for i in info["inputs"]):
        inputs.append(Tensor("length", "int64", [1], scalar=True))
    output = info["outputs"][0]
    default = [-1, vocab] if output["name"] == "logprobs" else None
    dims = tensor_dims(output["shape"]) if output.get("shape") else default
    if dims is None:
        raise ValueError(f"model_info.json gives no shape for the encoder output {output['name']}")
    return inputs, [Tensor(output["name"], "float32", dims)]


def models(name: str, info: dict, core, workspace: Path) -> list[Model]:
    batch, delay = serving(info)
    batch = core.batch(batch)
    vocab = len(json.loads((workspace / info["runtime"]["vocabulary"]).read_text())["tokens"]) + 1
    core_in, core_out = core_io(info, vocab)
    features = core_in[0].dims[0]
    files = {"model.py": MODEL, "buffered.py": MODEL.with_name("buffered.py"),
             **serving_code(),
             "model_info.json": workspace / "model_info.json", "asr": workspace / "asr",
             "runners.py": RUNNERS}  # every stage's onnxruntime sessions take its session_options
    length = Tensor("length", "int64", [1])
    text = Tensor("text", "string", [1])
    words = Tensor("words", "string", [1])  # JSON [[word, start ms, end ms], ...] from the best path

    def python(model: str, stage: str, inputs: list[Tensor], outputs: list[Tensor], runs_core: bool = False) -> Model:
        config = new_config(model, batch, inputs, outputs, backend="python")
        instances(config, gpu=runs_core and core.gpu and not core.native)
        parameters(config, stage=stage, **({"runner": core.python_runner(name), "core": core.file} if runs_core else {}))
        if stage != "stream":
            dynamic_batching(config, delay)
        return Model(config, {**files, **(core.python_files() if runs_core else {})})

    signal = Tensor("audio_signal", "float32", [features, -1])
    acoustic_out = core_out[0]  # CTC log-probs, or a transducer encoder's frames
    out = [python(f"{name}-features", "features", [Tensor("audio", "float32", [-1], ragged=True)], [signal, length]),
           python(f"{name}-decoder", "decoder", [Tensor(acoustic_out.name, "float32", acoustic_out.dims, ragged=True),
                                                 length], [text, words])]
    if core.native:
        acoustic = f"{name}-core"
        out.append(core.native_model(name, core_in, core_out, batch, delay))
        acoustic_inputs = {t.name: ("_features" if t.name == "audio_signal" else "_length") for t in core_in}
    else:
        acoustic = f"{name}-encoder"
        out.append(python(acoustic, "encoder", [Tensor(signal.name, signal.dtype, signal.dims, ragged=True), length],
                          [acoustic_out], runs_core=True))
        acoustic_inputs = {"audio_signal": "_features", "length": "_length"}
    steps = [(f"{name}-features", {"audio": "audio"}, {"audio_signal": "_features", "length": "_length"}),
             (acoustic, acoustic_inputs, {acoustic_out.name: "_acoustic"}),
             (f"{name}-decoder", {acoustic_out.name: "_acoustic", "length": "_length"}, {"text": "text", "words": "words"})]
    out.append(Model(ensemble(name, batch, [Tensor("audio", "float32", [-1])], [text, words], steps)))
    if info.get("mode") == "str":
        stream = python(stream_model_name(name), "stream", [Tensor("audio_chunk", "float32", [-1], ragged=True)],
                        [text, words], runs_core=True)
        sequence_batching(stream.config, batch, delay)
        out.append(stream)
    return out


def sequence_batching(config, batch: int, delay: int) -> None:
    """A streaming model's batching: sequences (correlation id, start and end flags), oldest first."""
    from tritonclient.grpc import model_config_pb2 as mc

    sequence = config.sequence_batching
    sequence.max_sequence_idle_microseconds = 60_000_000
    sequence.oldest.max_candidate_sequences = 4 * batch
    sequence.oldest.max_queue_delay_microseconds = delay
    Control = mc.ModelSequenceBatching.Control
    for name, kind in (("START", Control.CONTROL_SEQUENCE_START), ("END", Control.CONTROL_SEQUENCE_END)):
        control = sequence.control_input.add(name=name).control.add(kind=kind)
        control.fp32_false_true[:] = [0, 1]
    sequence.control_input.add(name="CORRID").control.add(kind=Control.CONTROL_SEQUENCE_CORRID,
                                                          data_type=mc.TYPE_UINT64)


def add_routes(app, served, triton, state, metrics) -> None:
    from runtime_min.tasks.asr.routes import add_routes as add

    add(app, served, triton, state, metrics)


def add_servicers(server, served, triton, state) -> None:
    """Riva's RivaSpeechRecognition on the gRPC front end."""
    from runtime_min.tasks.asr.riva import add_servicers as add

    add(server, served, triton, state)
