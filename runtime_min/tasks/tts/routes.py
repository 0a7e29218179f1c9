"""Synthesis endpoints for text-to-speech profiles, as TTS NIM has them over HTTP.

- `GET /v1/audio/list_voices`: `{"<language codes>": {"voices": ["<name>.<subvoice>", ...]}}`.
- `POST /v1/audio/synthesize`: multipart/form-data (or an urlencoded form) with `text`, and
  optionally `language` (BCP-47, default the voice's), `voice`, `sample_rate_hz` (default the
  voice's) and `encoding` (LINEAR_PCM, the only one here). The answer is one 16-bit PCM WAV.
- `POST /v1/audio/synthesize_online`: the same fields; the answer is raw 16-bit little-endian
  PCM, streamed a sentence at a time as each is made (`X-Sample-Rate` says the rate).

Everything a client can get wrong is checked before the first byte is queued (a 400 naming the
field), so a stream, once started, fails only if Triton does; then it ends early.
"""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import Counter, Histogram

from runtime_min.http import NOT_BLANK, ApiError, BodyTooLarge, Metrics, ServedModel, blank, refuse_unknown_fields, require_ready
from runtime_min.tasks.tts.synthesize import SynthesisError, Voice, pcm16, stream, synthesize, wav

ENCODINGS = ("LINEAR_PCM",)
_FIELDS = {"type": "object", "required": ["text"], "properties": {
    "text": {"type": "string", "pattern": NOT_BLANK, "description": "at most 10,000 characters"},
    "language": {"type": "string"}, "voice": {"type": "string"},
    "encoding": {"type": "string", "enum": list(ENCODINGS)},
    "sample_rate_hz": {"type": "integer", "minimum": 8000, "maximum": 192000}}}
# the form the routes read themselves, as OpenAPI says it (runtime_min.http)
SYNTHESIS_API = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": _FIELDS}, "application/x-www-form-urlencoded": {"schema": _FIELDS}}}}


class SynthesisMetrics:
    def __init__(self, registry):
        self.audio_seconds = Counter("nimbuild_synthesized_seconds_total", "Seconds of audio synthesised", registry=registry)
        self.first_audio = Histogram("nimbuild_time_to_first_audio_seconds", "Time from request to the first audio",
                                     buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=registry)


def add_routes(app: FastAPI, model: ServedModel, triton, state: dict, runtime_metrics: Metrics) -> None:
    metrics = SynthesisMetrics(runtime_metrics.registry)
    voice = Voice.of(model)

    @app.get("/v1/audio/list_voices")
    async def list_voices():
        return {voice.language_code: {"voices": [voice.full_name]}}

    async def prepared(request: Request) -> tuple[list[list[int]], int]:
        form = await _form(request)
        refuse_unknown_fields(form, tuple(_FIELDS["properties"]))
        text = form.get("text")
        if not isinstance(text, str) or blank(text):
            raise ApiError(400, "text: the text to speak is required (form field 'text')", param="text")
        encoding = str(form.get("encoding") or "LINEAR_PCM")
        if encoding not in ENCODINGS:
            raise ApiError(400, f"encoding: this service returns {', '.join(ENCODINGS)}, not {encoding}", param="encoding")
        rate = str(form.get("sample_rate_hz") or "0")
        if not (rate.isascii() and rate.isdigit()) or len(rate) > 6:  # int() of 5,000 digits raises
            raise ApiError(400, "sample_rate_hz: expected an integer from 8000 to 192000", param="sample_rate_hz")
        try:
            rate = voice.check(str(form.get("language") or ""), str(form.get("voice") or ""), int(rate))
            rows = voice.sentences(text)
        except SynthesisError as e:
            raise ApiError(400, str(e)) from None
        require_ready(triton)
        return rows, rate

    @app.post("/v1/audio/synthesize", openapi_extra=SYNTHESIS_API,
              responses={200: {"description": "The speech, a WAV file", "content": {"audio/wav": {}}}})
    async def synthesize_offline(request: Request):
        rows, rate = await prepared(request)
        start = time.perf_counter()
        audio = await synthesize(state["grpc"], model.name, rows, rate)
        metrics.first_audio.observe(time.perf_counter() - start)
        metrics.audio_seconds.inc(len(audio) / rate)
        return Response(wav(audio, rate), media_type="audio/wav")

    @app.post("/v1/audio/synthesize_online", openapi_extra=SYNTHESIS_API,
              responses={200: {"description": "16-bit PCM, a sentence at a time", "content": {"audio/pcm": {}},
                               "headers": {"X-Sample-Rate": {"schema": {"type": "string"}}}}})
    async def synthesize_online(request: Request):
        rows, rate = await prepared(request)
        start = time.perf_counter()

        async def pieces():
            first = True
            try:
                async for audio in stream(state["grpc"], model.name, rows, rate):
                    if first:
                        metrics.first_audio.observe(time.perf_counter() - start)
                        first = False
                    metrics.audio_seconds.inc(len(audio) / rate)
                    yield pcm16(audio)
            except ApiError:  # Triton failed mid-stream: the headers are sent, so the stream ends short
                return

        return StreamingResponse(pieces(), media_type="audio/pcm", headers={"X-Sample-Rate": str(rate)})


async def _form(request: Request):
    kind = request.headers.get("content-type", "")
    if not kind.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise ApiError(400, "send the fields as multipart/form-data (curl -F text=...)")
    try:
        return await request.form(max_files=0, max_fields=16)
    except BodyTooLarge:
        raise
    except Exception as e:  # python-multipart's parse errors, a file where none is expected
        raise ApiError(400, f"the form cannot be read: {e}") from None
