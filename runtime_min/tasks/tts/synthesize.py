"""What the synthesis front ends (TTS NIM's HTTP API and Riva's gRPC one) share: the request
checked against the served voice, text split into normalised sentences, and each sentence as one
Triton request. Errors a client caused are SynthesisError (HTTP 400, gRPC INVALID_ARGUMENT);
Triton failing is an ApiError 503 (gRPC UNAVAILABLE)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator

import numpy as np

from nimbuild.serving.tts_text import TextError, sentences, tokens
from runtime_min.http import triton_infer
from runtime_min.streams import BoundPassed
from runtime_min.tasks import language_matches

# One request's text: about ten minutes of speech, whose 16-bit audio at 48 kHz still fits a gRPC
# message (64 MiB). Longer text is for SynthesizeOnline's request stream, where only the text
# waiting for a sentence end is bounded by this.
MAX_TEXT_CHARACTERS = 10_000
# One SynthesizeOnline stream's text in all: about an hour of speech. Judged as the text arrives
# (runtime_min.streams), so a stream sent faster than it is spoken is refused at once.
MAX_STREAM_CHARACTERS = 50_000
IN_FLIGHT = 8  # sentences of one request queued in Triton at a time: a long text must not crowd out others
RATES = (8000, 192000)


class SynthesisError(ValueError):
    """A request the client can fix; the message says how."""


class StreamTooLong(SynthesisError, BoundPassed):
    """A SynthesizeOnline stream past MAX_STREAM_CHARACTERS (gRPC OUT_OF_RANGE)."""


class TextBudget:
    """The text a SynthesizeOnline stream has sent, held to MAX_STREAM_CHARACTERS as it arrives."""

    def __init__(self, most: int = MAX_STREAM_CHARACTERS):
        self.most, self.characters = most, 0

    def take(self, request) -> None:
        self.characters += len(request.text)
        if self.characters > self.most:
            raise StreamTooLong(f"the stream passed {self.most} characters of text, the most one stream carries; "
                                "send more as another stream")


@dataclass
class Voice:
    """The served voice: Riva's `<name>.<subvoice>`, its language, and how its text is read."""

    name: str
    subvoice: str
    language_code: str
    sample_rate: int
    labels: list[str]
    max_characters: int

    @classmethod
    def of(cls, model) -> "Voice":
        runtime = model.info["runtime"]
        voice = runtime["voice"]
        return cls(voice["name"], voice["subvoice"], voice["language_code"], int(runtime["sample_rate"]),
                   list(runtime["labels"]), int(runtime["max_characters"]))

    @property
    def full_name(self) -> str:
        return f"{self.name}.{self.subvoice}"

    def check(self, language: str, voice: str, rate: int) -> int:
        """The output rate (the voice's own when 0), or SynthesisError naming what is served."""
        if not language_matches(language, self.language_code):
            raise SynthesisError(f"language {language!r} is not served; this voice speaks {self.language_code}")
        if voice and voice not in (self.full_name, self.name):
            raise SynthesisError(f"voice {voice!r} is not served; the voice here is {self.full_name}")
        if rate and not RATES[0] <= rate <= RATES[1]:
            raise SynthesisError(f"sample rate {rate} Hz is outside {RATES[0]} to {RATES[1]}")
        return rate or self.sample_rate

    def sentences(self, text: str, empty_ok: bool = False) -> list[list[int]]:
        """Each sentence's tokens, or SynthesisError when there is nothing to say or too much."""
        if len(text) > MAX_TEXT_CHARACTERS:
            raise SynthesisError(f"text has {len(text)} characters; at most {MAX_TEXT_CHARACTERS} per request")
        try:
            spoken = sentences(text, set(self.labels), self.max_characters)
        except TextError as e:
            raise SynthesisError(str(e)) from None
        if not spoken and not empty_ok:
            raise SynthesisError("text has nothing this voice can say (no letters or digits)")
        return [tokens(s, self.labels) for s in spoken]


async def synthesize(client, model_name: str, rows: list[list[int]], rate: int) -> np.ndarray:
    """The whole text's audio: up to IN_FLIGHT sentences queued at once (Triton batches them with
    other requests'), joined in order."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(row: list[int]) -> np.ndarray:
        async with gate:
            return await sentence_audio(client, model_name, row, rate)

    return np.concatenate(await asyncio.gather(*(one(row) for row in rows)))


async def stream(client, model_name: str, rows: list[list[int]], rate: int) -> AsyncIterator[np.ndarray]:
    """Each sentence's audio as soon as it is made, in order; the next sentence is queued while
    this one is sent, so the stream does not wait on its own round trips."""
    pending = asyncio.ensure_future(sentence_audio(client, model_name, rows[0], rate))
    try:
        for k in range(len(rows)):
            audio = await pending
            if k + 1 < len(rows):
                pending = asyncio.ensure_future(sentence_audio(client, model_name, rows[k + 1], rate))
            yield audio
    finally:
        if not pending.done():
            pending.cancel()


async def sentence_audio(client, model_name: str, row: list[int], rate: int) -> np.ndarray:
    import tritonclient.grpc.aio as triton_grpc

    tokens_in = triton_grpc.InferInput("tokens", [1, len(row)], "INT64")
    tokens_in.set_data_from_numpy(np.asarray(row, dtype=np.int64).reshape(1, -1))
    rate_in = triton_grpc.InferInput("sample_rate", [1, 1], "INT32")
    rate_in.set_data_from_numpy(np.array([[rate]], dtype=np.int32))
    result = await triton_infer(client, model_name, [tokens_in, rate_in], [triton_grpc.InferRequestedOutput("audio")])
    return result.as_numpy("audio").reshape(-1)


def pcm16(audio: np.ndarray) -> bytes:
    """float32 in [-1, 1] -> 16-bit little-endian PCM (Riva's LINEAR_PCM), quantised by libsndfile
    exactly as the WAV of the same audio is, so the stream and the file hold the same samples."""
    return _encoded(audio, 8000, "RAW")


def wav(audio: np.ndarray, rate: int) -> bytes:
    """A 16-bit mono PCM WAV file."""
    return _encoded(audio, rate, "WAV")


def _encoded(audio: np.ndarray, rate: int, container: str) -> bytes:
    import io

    import soundfile

    out = io.BytesIO()
    soundfile.write(out, audio, rate, subtype="PCM_16", format=container, endian="LITTLE")
    return out.getvalue()
