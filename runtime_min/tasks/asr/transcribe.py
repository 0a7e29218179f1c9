"""What the speech front ends (HTTP and Riva's gRPC) share: audio in the forms clients send it, one
offline transcription through the Triton ensemble, and one stream through the sequence-batched
model. Errors a client caused are SpeechError (HTTP 400, gRPC INVALID_ARGUMENT); Triton failing is
an ApiError 503 (gRPC UNAVAILABLE)."""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field

import numpy as np

from runtime_min.http import triton_infer
from runtime_min.streams import BoundPassed

_correlation = itertools.count(int.from_bytes(os.urandom(3), "big") << 20)
# Audio one stream may carry (HTTP and gRPC alike), as Google's streaming recognition holds a
# stream to about five minutes: a longer dictation is several streams. Judged on the audio as it
# arrives (runtime_min.streams), so a stream sent faster than it is decoded is refused at once.
MAX_STREAM_SECONDS = 300.0
SNIFFED = (b"RIFF", b"fLaC", b"OggS")  # containers whose header says rate and channels


class SpeechError(ValueError):
    """A request the client can fix; the message says how."""


@dataclass
class Transcript:
    text: str
    words: list[tuple[str, int, int, float]] = field(default_factory=list)  # (word, start ms, end ms, confidence)
    language: str | None = None  # what a multilingual model decoded it as (given, or detected)

    @property
    def confidence(self) -> float:
        """The mean of the words' confidences (0 when nothing was heard)."""
        return sum(w[3] for w in self.words) / len(self.words) if self.words else 0.0


def language_of(model) -> str:
    """The BCP-47 language the model transcribes (recorded by the profile, else en-US); `multi` for a
    model that takes several (Whisper, Canary), as Riva's Whisper NIM names it."""
    runtime = model.info.get("runtime") or {}
    if (runtime.get("prompt") or {}).get("multilingual"):
        return "multi"
    return str(model.info.get("language") or runtime.get("language") or "en-US")


def tasks_of(model) -> tuple[str, ...]:
    """What a request may ask of the model: transcribe, and translate (into English) where it can."""
    prompt = (model.info.get("runtime") or {}).get("prompt")
    return tuple(prompt["tasks"]) if prompt and prompt.get("multilingual") else ("transcribe",)


def requested_language(model, requested: str) -> str | None:
    """The language code to send the model for a request's BCP-47 `language` (None: the model's
    only one, or detect it: Whisper; its default: Canary); a SpeechError names what the model takes instead."""
    prompt = (model.info.get("runtime") or {}).get("prompt")
    if prompt and prompt.get("multilingual"):
        code = requested.replace("_", "-").split("-")[0].lower()
        if code in ("", "multi"):
            return None
        if code not in prompt["languages"]:
            none = "to detect it" if prompt.get("detects", True) else f"for {prompt.get('default_language', 'en')}"
            raise SpeechError(f"this model takes {', '.join(sorted(prompt['languages']))} (or none, {none}), "
                              f"not {requested}")
        return code
    from runtime_min.tasks import language_matches

    served = language_of(model)
    if not language_matches(requested, served):
        raise SpeechError(f"this model transcribes {served}, not {requested}")
    return None


def decode_pcm16(data: bytes, channels: int = 1) -> np.ndarray:
    """16-bit little-endian PCM (interleaved when several channels) -> mono float32 in [-1, 1)."""
    frame = 2 * max(1, channels)
    samples = np.frombuffer(data[: len(data) // frame * frame], dtype="<i2").astype(np.float32) / 32768.0
    return samples.reshape(-1, channels).mean(axis=1) if channels > 1 else samples


def wav_header(data: bytes) -> tuple[int, int, int] | None:
    """(sample rate, channels, offset of the samples) of a 16-bit PCM WAV's header, when `data`
    holds all of it; None while more bytes are needed. A WAV of another sample format is refused."""
    if len(data) < 12:
        return None
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise SpeechError("the stream starts with neither a WAV header nor raw PCM of a stated rate; "
                          "set encoding LINEAR_PCM and sample_rate_hertz, or send a 16-bit PCM WAV")
    position, rate, channels = 12, None, None
    while position + 8 <= len(data):
        kind, size = data[position:position + 4], int.from_bytes(data[position + 4:position + 8], "little")
        body = position + 8
        if kind == b"fmt ":
            if body + 16 > len(data):
                return None
            audio_format = int.from_bytes(data[body:body + 2], "little")
            channels = int.from_bytes(data[body + 2:body + 4], "little")
            rate = int.from_bytes(data[body + 4:body + 8], "little")
            bits = int.from_bytes(data[body + 14:body + 16], "little")
            if audio_format not in (1, 0xFFFE) or bits != 16:
                raise SpeechError(f"streamed WAV audio must be 16-bit PCM (this one is format {audio_format}, "
                                  f"{bits}-bit); send it offline, or as LINEAR_PCM")
        elif kind == b"data":
            if rate is None or not channels:
                raise SpeechError("the WAV header has no fmt chunk before its data")
            return rate, channels, body
        position = body + size + (size & 1)
        if position > 1 << 20:
            raise SpeechError("the WAV header is over 1 MiB; that is not a header")
    return None


def translation_source(model, task: str, language: str | None) -> None:
    """A translation's speech must be in another language than English, the one it is translated
    into; a model that does not detect the language (Canary) must be told which (a SpeechError)."""
    prompt = (model.info.get("runtime") or {}).get("prompt") or {}
    if task == "translate" and not prompt.get("detects", True) and (language or prompt.get("default_language")) == "en":
        raise SpeechError("speech is translated into English here; give the language it is spoken in (not en): "
                          "this model does not detect it")


def model_options(model, task: str, language: str | None, target: str | None = None) -> dict[str, str] | None:
    """What a request sends the model beside the audio: the task, the language spoken and the one
    to write (Canary's translations out of English) for models that take them (Whisper's and
    Canary's: `runtime.prompt`; no language: detected, or the model's default), nothing for the rest."""
    if (model.info.get("runtime") or {}).get("prompt") is None:
        return None
    return {"task": task, **({"language": language} if language else {}),
            **({"target_language": target} if target else {})}


CUSTOM_KEYS = ("task", "source_language", "target_language")  # what Riva's custom_configuration may set here


def custom_configuration(model, custom: dict[str, str], language: str | None) -> tuple[str, str | None, str | None]:
    """(task, language spoken, language written) from Riva's `custom_configuration`, as the ASR NIM
    takes them for Canary and Whisper (`task:translate`, `source_language`, `target_language`), over
    what `language_code` said; a key this server does not act on is a SpeechError naming it, never
    dropped. Models without a prompt take none."""
    prompt = (model.info.get("runtime") or {}).get("prompt")
    unknown = sorted(k for k in custom if k not in CUSTOM_KEYS or prompt is None)
    if unknown:
        takes = f"takes {', '.join(CUSTOM_KEYS)}" if prompt else "takes no keys for this model"
        raise SpeechError(f"custom_configuration: {', '.join(unknown)} not understood (this server {takes})")
    task = custom.get("task", "transcribe").strip().lower()
    if task not in tasks_of(model):
        raise SpeechError(f"custom_configuration: task {task!r}: this model does {', '.join(tasks_of(model))}")
    if custom.get("source_language"):
        language = requested_language(model, custom["source_language"])
    target = requested_language(model, custom["target_language"]) if custom.get("target_language") else None
    if target and task == "transcribe" and target != (language or prompt.get("default_language")):
        task = "translate"  # a written language other than the spoken one is a translation
    if task == "translate" and target is None:
        translation_source(model, task, language)
    return task, language, target


async def transcribe(client, model_name: str, audio: np.ndarray, options: dict[str, str] | None = None) -> Transcript:
    """One utterance (float32 at the model's rate) through the offline model. `options` (language,
    task) go to the models that take them (Whisper's), which also answer the language used."""
    text, words, language = await _infer(client, model_name, "audio", audio, options or {})
    return Transcript(text, words, language)


async def _infer(client, model_name: str, name: str, audio: np.ndarray, options: dict[str, str],
                 **sequence) -> tuple[str, list, str | None]:
    """Over Triton's gRPC client, not its HTTP (aiohttp) one: with nothing else changed, offline
    RTFX at 16 clients went from 106 to 191 here (bench_asr), the runtime's CPU being shared with
    the models'."""
    import tritonclient.grpc.aio as triton_grpc

    tensor = triton_grpc.InferInput(name, [1, len(audio)], "FP32")
    tensor.set_data_from_numpy(audio.reshape(1, -1).astype(np.float32, copy=False))
    inputs = [tensor]
    for key, value in options.items():
        option = triton_grpc.InferInput(key, [1, 1], "BYTES")
        option.set_data_from_numpy(np.array([[value.encode()]], dtype=np.object_))
        inputs.append(option)
    names = ("text", "words", "language") if options else ("text", "words")
    result = await triton_infer(client, model_name, inputs, [triton_grpc.InferRequestedOutput(n) for n in names], **sequence)
    text = result.as_numpy("text").reshape(-1)[0].decode()
    language = result.as_numpy("language").reshape(-1)[0].decode() or None if options else None
    return text, [tuple(w) for w in json.loads(result.as_numpy("words").reshape(-1)[0].decode())], language


class StreamTooLong(SpeechError, BoundPassed):
    """A stream past MAX_STREAM_SECONDS (gRPC OUT_OF_RANGE)."""


class AudioBudget:
    """The audio a stream has sent, held to MAX_STREAM_SECONDS: `take` each piece as it arrives."""

    def __init__(self, max_seconds: float = MAX_STREAM_SECONDS):
        self.max_seconds, self.seconds = max_seconds, 0.0

    def take(self, pcm16: bytes, rate: int) -> None:
        self.seconds += len(pcm16) / 2 / rate
        if self.seconds > self.max_seconds:
            raise StreamTooLong(f"the stream passed {self.max_seconds:g} s of audio, the most one stream "
                                "carries; send longer audio as several streams")


def stream_seconds(model) -> float:
    """The most audio one stream of this model may carry: MAX_STREAM_SECONDS, or less where the
    profile says (a Whisper stream is re-decoded whole, so it holds one window)."""
    return float((model.info.get("runtime") or {}).get("max_stream_seconds") or MAX_STREAM_SECONDS)


class StreamSession:
    """One stream into the sequence-batched model: 16-bit mono PCM at `source_rate` in, one
    transcript so far per `chunk_ms` of audio out, then the final one. The sequence always ends
    (END flag), so Triton drops its state even when the client goes away: call `close`. `options`
    (language, task) go with every chunk to models that take them."""

    def __init__(self, client, model_name: str, source_rate: int, rate: int, chunk_ms: int,
                 options: dict[str, str] | None = None):
        from nimbuild.serving.audio import StreamResampler

        self.client, self.model_name = client, model_name
        self.source_rate = source_rate
        self.chunk_bytes = 2 * max(1, source_rate * chunk_ms // 1000)
        self.resampler = StreamResampler(source_rate, rate)  # the same samples the whole file would give
        self.corrid = next(_correlation)
        self.options = options or {}
        self.pending, self.received, self.started, self.ended = b"", 0, False, False

    @property
    def seconds(self) -> float:
        return self.received / 2 / self.source_rate

    async def push(self, data: bytes) -> list[Transcript]:
        self.pending += data
        self.received += len(data)
        out = []
        while len(self.pending) >= self.chunk_bytes:
            chunk, self.pending = self.pending[:self.chunk_bytes], self.pending[self.chunk_bytes:]
            out.append(await self._send(chunk, end=False))
        return out

    async def finish(self) -> Transcript:
        pending, self.pending = self.pending, b""
        return await self._send(pending, end=True)

    async def close(self) -> None:
        if self.started and not self.ended:
            try:
                await self._send(b"", end=True)
            except Exception:  # Triton is gone: it holds no state for us any more
                pass

    async def _send(self, data: bytes, end: bool) -> Transcript:
        audio = self.resampler.push(decode_pcm16(data), final=end)
        first, self.started, self.ended = not self.started, True, self.ended or end
        text, words, language = await _infer(self.client, f"{self.model_name}-stream", "audio_chunk", audio,
                                             self.options, sequence_id=self.corrid, sequence_start=first,
                                             sequence_end=end)
        return Transcript(text, words, language)
