"""Triton Python model for Whisper profiles: one clip in, its transcript out.

    audio     float32 [samples]  16 kHz mono, at most the model's window (30 s)
    language  string  [1]        optional: a language code the model has (en, de...); empty or absent: detected
    task      string  [1]        optional: transcribe (default) or translate (into English)
    text      string  [1]        the transcript
    words     string  [1]        JSON []: Whisper profiles give no word timings yet
    language  string  [1]        the language it was decoded as (given or detected)

The requests of one execute are the clips the dynamic batcher gathered: their features are encoded
as one batch, and greedy decoding runs them together, each leaving the batch when it ends.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the helpers copied beside this file, whatever else is installed

from nimbuild.serving.seq2seq import TranslationGraphs  # noqa: E402
from nimbuild.serving.whisper_asr import WhisperDecoder  # noqa: E402
from nimbuild.serving.whisper_audio import batch_features  # noqa: E402


def _string(request, name: str) -> str:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return ""
    value = tensor.as_numpy().reshape(-1)
    return (value[0].decode() if isinstance(value[0], bytes) else str(value[0])) if len(value) else ""


class TritonPythonModel:
    def initialize(self, args):
        from runners import open_runner
        from tokenizers import Tokenizer

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.runtime = json.loads((HERE / "model_info.json").read_text())["runtime"]
        self.max_batch = max(1, int(config.get("max_batch_size") or 1))
        device = int(args.get("model_instance_device_id") or 0)
        encoder = open_runner(params["runner"], HERE / params["core"], device)
        decoder = open_runner("onnxruntime", HERE / self.runtime["decoder"]).session  # growing shapes: onnxruntime
        self.decoder = WhisperDecoder(TranslationGraphs(encoder, decoder), self.runtime)
        self.filters = np.load(HERE / self.runtime["features"]["filters"])
        self.text = Tokenizer.from_file(str(HERE / "tokenizer" / "tokenizer.json"))

    def execute(self, requests):
        rows, responses = [], [None] * len(requests)
        for i, request in enumerate(requests):
            audio = pb_utils.get_input_tensor_by_name(request, "audio").as_numpy().reshape(-1).astype(np.float32)
            language, task = _string(request, "language") or None, _string(request, "task") or "transcribe"
            problem = self._problem(audio, language, task)
            if problem:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(problem))
            else:
                rows.append((i, audio, language, task))
        budget = int(self.runtime["max_output_tokens"])
        for start in range(0, len(rows), self.max_batch):
            chunk = rows[start:start + self.max_batch]
            features = batch_features([r[1] for r in chunk], self.filters, self.runtime["features"])
            decoded = self.decoder.decode(features, [r[2] for r in chunk], [r[3] for r in chunk], [budget] * len(chunk))
            for (i, *_), (tokens, language) in zip(chunk, decoded):
                text = self.text.decode(tokens, skip_special_tokens=True).strip()
                responses[i] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("text", np.array([text.encode()], dtype=np.object_)),
                    pb_utils.Tensor("words", np.array([b"[]"], dtype=np.object_)),
                    pb_utils.Tensor("language", np.array([(language or "").encode()], dtype=np.object_))])
        return responses

    def _problem(self, audio: np.ndarray, language: str | None, task: str) -> str | None:
        window = int(self.runtime["features"]["window_samples"])
        if not 0 < len(audio) <= window:
            return f"a clip has 1 to {window} samples (one {window // 16000} s window); this one has {len(audio)}"
        prompt = self.runtime["prompt"]
        if prompt["multilingual"]:
            if language is not None and language not in prompt["languages"]:
                return f"language {language!r}: this model takes {', '.join(prompt['languages'])}"
            if task not in prompt["tasks"]:
                return f"task {task!r}: this model does {', '.join(prompt['tasks'])}"
        elif task != "transcribe" or language not in (None, "en"):
            return "this English-only model transcribes English"
        return None
