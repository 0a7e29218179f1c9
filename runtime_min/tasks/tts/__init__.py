"""Text-to-speech profiles in Triton: one Python model `<model>`, dynamically batched, that takes
one normalised sentence's tokens and answers its audio: the spectrogram generator (the core, run
by its runner: onnxruntime, or a TensorRT-RTX engine on a GPU) over the batch's sentences of equal
length together, then the vocoder per sentence (Griffin-Lim over the model's own mel filterbank,
nimbuild/serving/griffin_lim.py, or a HiFiGAN graph on onnxruntime), resampled to the rate asked for.

The front ends (routes.py for TTS NIM's HTTP API, riva.py for Riva's RivaSpeechSynthesis) split
text into sentences and normalise it (nimbuild/serving/tts_text.py, the code the build checked against
NeMo's parser) before anything is queued, so text that cannot be spoken is a 400 or
INVALID_ARGUMENT, and each sentence is one Triton request: concurrent requests' sentences share
a batch, and a stream's first sentence is not held back by its last.
"""

from __future__ import annotations

from pathlib import Path

from runtime_min.deploy.config import Model, Tensor, dynamic_batching, instances, new_config, parameters
from runtime_min.tasks import batch_within_export, serving_code

HERE = Path(__file__).parent


def refuses(core) -> str | None:
    if core.native:
        return "the mel spectrogram's length follows the predicted durations, so the generator runs inside the synthesis model"
    return None


def models(name: str, info: dict, core, workspace: Path) -> list[Model]:
    batch, delay = batch_within_export(info, core)
    inputs = [Tensor("tokens", "int64", [-1], ragged=True), Tensor("sample_rate", "int32", [1])]
    config = new_config(name, batch, inputs, [Tensor("audio", "float32", [-1])], backend="python")
    dynamic_batching(config, delay)
    instances(config, gpu=core.gpu)
    parameters(config, runner=core.runner, core=core.file)
    files = {"model.py": HERE / "model.py", "model_info.json": workspace / "model_info.json", "tts": workspace / "tts",
             **serving_code(), **core.python_files()}
    return [Model(config, files)]


def add_routes(app, served, triton, state, metrics) -> None:
    from runtime_min.tasks.tts.routes import add_routes as add

    add(app, served, triton, state, metrics)


def add_servicers(server, served, triton, state) -> None:
    """Riva's RivaSpeechSynthesis on the gRPC front end."""
    from runtime_min.tasks.tts.riva import add_servicers as add

    add(server, served, triton, state)
