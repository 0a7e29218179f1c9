"""Triton Python model for text-to-speech profiles: one normalised sentence's tokens in, its audio
out, at the sample rate asked for.

    tokens       int64 [characters]  the sentence's character ids (nimbuild/serving/tts_text.py)
    sample_rate  int32 [1]           the rate the audio is wanted at (0: the model's own)
    audio        float32 [samples]   in [-1, 1]

The requests of one execute are the sentences the dynamic batcher gathered: the spectrogram
generator runs those of equal length together (never padded: see _spectrograms), and the vocoder
then makes each sentence's audio from its own frames.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the helpers copied beside this file, whatever else is installed

from nimbuild.serving.audio import resample  # noqa: E402
from nimbuild.serving.griffin_lim import GriffinLim  # noqa: E402

PEAK = 0.95  # Griffin-Lim's audio is scaled so its loudest sample is here: its level follows no target


class TritonPythonModel:
    def initialize(self, args):
        from runners import open_runner

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        runtime = json.loads((HERE / "model_info.json").read_text())["runtime"]
        self.rate = int(runtime["sample_rate"])
        self.vocabulary = len(runtime["labels"])
        self.max_characters = int(runtime["max_characters"])
        self.max_batch = max(1, int(config.get("max_batch_size") or 1))
        mel, vocoder = runtime["mel"], runtime["vocoder"]
        device = int(args.get("model_instance_device_id") or 0)
        if vocoder["kind"] == "griffin-lim":
            self.vocoder = GriffinLim(np.load(HERE / vocoder["filterbank"]), int(mel["n_fft"]), int(mel["hop_length"]),
                                      float(mel["log_guard"]), int(vocoder["iterations"]), int(mel["win_length"]))
        elif vocoder["kind"] == "hifigan":  # its graph on onnxruntime, whatever runs the spectrogram generator
            self.vocoder = _NeuralVocoder(open_runner("onnxruntime", HERE / vocoder["graph"], device))
        else:
            raise ValueError(f"this model has no {vocoder['kind']} vocoder")
        self.normalise = vocoder["kind"] == "griffin-lim"
        self.session = open_runner(params["runner"], HERE / params["core"], device)

    def execute(self, requests):
        rows, rates, responses = [], [], [None] * len(requests)
        for i, request in enumerate(requests):
            tokens = pb_utils.get_input_tensor_by_name(request, "tokens").as_numpy().reshape(-1).astype(np.int64)
            rate = int(pb_utils.get_input_tensor_by_name(request, "sample_rate").as_numpy().reshape(-1)[0]) or self.rate
            problem = self._problem(tokens, rate)
            if problem:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(problem))
            else:
                rows.append((i, tokens))
                rates.append(rate)
        for (i, _), rate, mel in zip(rows, rates, self._spectrograms([t for _, t in rows])):
            audio = self._audio(mel, rate)
            responses[i] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("audio", audio[None])])
        return responses

    def _problem(self, tokens: np.ndarray, rate: int) -> str | None:
        if not 1 <= len(tokens) <= self.max_characters:
            return f"a sentence has 1 to {self.max_characters} characters; this one has {len(tokens)}"
        if tokens.min() < 0 or tokens.max() >= self.vocabulary:
            return f"token ids are 0 to {self.vocabulary - 1}"
        if not 8000 <= rate <= 192000:
            return f"sample rate {rate} is outside 8000 to 192000 Hz"
        return None

    def _spectrograms(self, rows: list[np.ndarray]) -> list[np.ndarray]:
        """Each row's mel spectrogram [mels, frames]. Rows of one length run as one batch; rows are
        never padded, because FastPitch's predictors would hear the padding (nimbuild/export/tts.py),
        and a sentence's audio must not depend on what it was batched with."""
        mels: list = [None] * len(rows)
        by_length: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            by_length.setdefault(len(row), []).append(i)
        for members in by_length.values():
            for start in range(0, len(members), self.max_batch):
                group = members[start:start + self.max_batch]
                text = np.stack([rows[i] for i in group])
                feeds = {"text": text, "pitch": np.zeros(text.shape, np.float32), "pace": np.ones(text.shape, np.float32)}
                spect, frames = self.session.run(["spect", "num_frames"], feeds)
                for k, i in enumerate(group):
                    mels[i] = spect[k, :, :int(np.asarray(frames).reshape(-1)[k])]
        return mels

    def _audio(self, mel: np.ndarray, rate: int) -> np.ndarray:
        audio = self.vocoder(mel)
        peak = float(np.abs(audio).max(initial=0.0))
        if self.normalise and peak > 0:
            audio = audio * (PEAK / peak)
        return np.clip(resample(audio, self.rate, rate), -1.0, 1.0).astype(np.float32)


class _NeuralVocoder:
    """A vocoder graph (NeMo's HiFiGAN export): spec [1, mels, frames] -> audio."""

    def __init__(self, runner):
        self.runner = runner

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        (audio,) = self.runner.run(["audio"], {"spec": np.ascontiguousarray(mel[None], dtype=np.float32)})
        return np.asarray(audio, dtype=np.float32).reshape(-1)
