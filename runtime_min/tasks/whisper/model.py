"""Triton Python model for encoder-decoder speech profiles (Whisper; Canary, whose runtime folder
serves with this file): one clip in, its transcript out.

Offline (`<model>`, stage `offline`), dynamically batched:

    audio     float32 [samples]  16 kHz mono, at most the profile's max_seconds (Whisper: clips over one
                                 window are cut into overlapping windows and joined, as transformers' pipeline does)
    language  string  [1]        optional: a language code the model has (en, de...); empty or absent:
                                 detected (Whisper), the model's default (Canary: en)
    task      string  [1]        optional: transcribe (default) or translate (into English)
    target_language string [1]   optional: the language to write (Canary: translation out of English;
                                 Whisper takes en only)
    text      string  [1]        the transcript
    words     string  [1]        JSON []: Whisper profiles give no word timings yet
    language  string  [1]        the language it was decoded as (given or detected)

The requests of one execute are the clips the dynamic batcher gathered: their features are encoded
as one batch, and greedy decoding runs them together, each leaving the batch when it ends. What
differs by model (front end, prompt, text) is nimbuild/serving's WhisperSpeech or CanarySpeech,
chosen by the profile's `runtime.kind`, the code the build checked against the source framework.

Streaming (`<model>-stream`, stage `stream`, sequence-batched: CORRID, START, END) takes
`audio_chunk` instead of `audio`: each sequence's audio is kept (one window at most) and decoded
whole after every chunk, the sequences of one execute as one batch. Neither model has a streaming
encoder, so this is the honest form: a partial is the transcript of everything heard so far, and
the final one is exactly the offline transcript of the stream's audio.
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


def _input(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)


def _string(request, name: str) -> str:
    value = _input(request, name)
    if value is None or not len(value):
        return ""
    return value[0].decode() if isinstance(value[0], bytes) else str(value[0])


def _strings(**outputs: str):
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor(name, np.array([[value.encode()]], dtype=np.object_)) for name, value in outputs.items()])


def _error(message: str):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


class TritonPythonModel:
    def initialize(self, args):
        from runners import open_runner

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.stage = params.get("stage", "offline")
        self.runtime = json.loads((HERE / "model_info.json").read_text())["runtime"]
        self.max_batch = max(1, int(config.get("max_batch_size") or 1))
        device = int(args.get("model_instance_device_id") or 0)
        encoder = open_runner(params["runner"], HERE / params["core"], device)
        decoder = open_runner("onnxruntime", HERE / self.runtime["decoder"]).session  # growing shapes: onnxruntime
        if self.runtime.get("kind") == "canary":
            from nimbuild.serving.canary_asr import CanarySpeech as Speech
        else:
            from nimbuild.serving.whisper_asr import WhisperSpeech as Speech
        self.speech = Speech(TranslationGraphs(encoder, decoder), self.runtime, HERE)
        # the most audio one request may carry: a clip (Whisper chunks a long one), or a stream (one window)
        self.window = self.speech.window if self.stage == "offline" else int(float(self.runtime["max_stream_seconds"]) * 16000)
        self.streams: dict[int, np.ndarray] = {}  # a sequence's audio so far (stream stage)

    def execute(self, requests):
        responses, rows = [None] * len(requests), []
        for i, request in enumerate(requests):
            audio = self._stream_audio(request) if self.stage == "stream" else _input(request, "audio")
            if isinstance(audio, str):
                responses[i] = _error(audio)
                continue
            audio = audio.astype(np.float32, copy=False)
            language, task = _string(request, "language") or None, _string(request, "task") or "transcribe"
            target = _string(request, "target_language") or None
            problem = self._problem(audio, language, task, target)
            if problem:
                responses[i] = _error(problem)
            elif not len(audio):  # a stream that has sent nothing yet has heard nothing
                responses[i] = _strings(text="", words="[]", language=language or "")
            else:
                rows.append((i, audio, language, task, target))
        for start in range(0, len(rows), self.max_batch):
            chunk = rows[start:start + self.max_batch]
            decoded = self.speech.transcribe([r[1] for r in chunk], [r[2] for r in chunk], [r[3] for r in chunk],
                                             [r[4] for r in chunk])
            for (i, *_), (text, language) in zip(chunk, decoded):
                responses[i] = _strings(text=text, words="[]", language=language)
        return responses

    def _stream_audio(self, request) -> np.ndarray | str:
        """The sequence's audio so far with this chunk, or why the stream cannot go on."""
        corrid = int(_input(request, "CORRID")[0])
        start, end = bool(_input(request, "START")[0]), bool(_input(request, "END")[0])
        heard = np.zeros(0, np.float32) if start or corrid not in self.streams else self.streams[corrid]
        audio = np.concatenate([heard, _input(request, "audio_chunk").astype(np.float32)])
        if end or len(audio) > self.window:
            self.streams.pop(corrid, None)
        else:
            self.streams[corrid] = audio
        if len(audio) > self.window:
            return (f"the stream passed {self.window / 16000:g} s of audio, the most this model decodes at once; "
                    "send longer audio as several streams")
        return audio

    def _problem(self, audio: np.ndarray, language: str | None, task: str, target: str | None) -> str | None:
        if len(audio) > self.window or (self.stage != "stream" and not len(audio)):
            return f"a clip has 1 to {self.window} samples ({self.window / 16000:g} s); this one has {len(audio)}"
        return self.speech.problem(language, task, target)
