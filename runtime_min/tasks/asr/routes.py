"""Speech endpoints for speech profiles (asr-ctc, asr-rnnt, asr-whisper), as ASR NIM has them over HTTP.

Whisper profiles take `language` as any language the checkpoint has (none: detected, as
`verbose_json`'s `language` then says) and also answer `POST /v1/audio/translations` (the same
form; the transcript in English); they give no word timings, so `word` granularity is a 400.

`POST /v1/audio/transcriptions`: OpenAI's multipart shape (`file`, `model`, `language` as BCP-47,
`response_format` json | text | verbose_json | srt | vtt, `timestamp_granularities[]` word and/or
segment, `temperature` accepted and ignored as greedy CTC has no sampling). The file is any
WAV/FLAC/OGG soundfile reads, at any sample rate, mono or stereo: it is downmixed and resampled
here, then sent to the Triton ensemble (features -> encoder -> CTC decoder, which also gives each
word's start and end from the best path).

`POST /v1/audio/transcriptions/stream` (profiles with `mode: str`): the request body is raw
16-bit little-endian mono PCM, sent as it is captured (chunked transfer encoding), at the rate in
`?sample_rate=` (default: the model's). Every `chunk_ms` of audio goes to the sequence-batched
Triton model under one correlation id (start and end flags on the first and last chunk), and the
response streams a server-sent event with the transcript so far after each chunk, then one with
`"is_final": true` and `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from prometheus_client import Counter, Histogram
from starlette.requests import ClientDisconnect

from runtime_min.http import ApiError, BodyTooLarge, Metrics, ServedModel, refuse_unknown_fields, require_ready
from runtime_min.streams import read_ahead
from runtime_min.tasks.asr.transcribe import (
    AudioBudget,
    SpeechError,
    StreamSession,
    Transcript,
    language_of,
    model_options,
    requested_language,
    stream_seconds,
    tasks_of,
    transcribe,
    translation_source,
)

FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
GRANULARITIES = ("word", "segment")
CUE_WORDS, CUE_GAP_MS = 12, 800  # a subtitle cue ends after this many words, or at a pause this long
RESPONSE_TYPES = ("application/json", "text/plain", "text/vtt", "application/x-subrip")

# The bodies the routes read themselves (a form, raw PCM), as OpenAPI says them (runtime_min.http)
TRANSCRIPTION_API = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "WAV, FLAC or OGG audio"},
        "model": {"type": "string"}, "language": {"type": "string", "description": "BCP-47, e.g. en-US"},
        "response_format": {"type": "string", "enum": list(FORMATS)},
        "timestamp_granularities[]": {"type": "array", "items": {"type": "string", "enum": list(GRANULARITIES)}},
        "temperature": {"type": "number", "enum": [0], "description": "0 only: decoding is greedy"}}}}}}}
# the form fields the route implements: the schema's, and the granularities without OpenAI's brackets
TRANSCRIPTION_FIELDS = (*TRANSCRIPTION_API["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"],
                        "timestamp_granularities")
STREAM_API = {
    "parameters": [{"name": "sample_rate", "in": "query", "required": False,
                    "schema": {"type": "integer", "minimum": 8000, "maximum": 192000}}],
    "requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {
        "type": "string", "format": "binary",
        "description": "16-bit little-endian mono PCM, sent as captured (chunked); at most 300 s of it"}}}}}


class SpeechMetrics:
    def __init__(self, registry):
        self.audio_seconds = Counter("nimbuild_audio_seconds_total", "Seconds of audio transcribed", registry=registry)
        self.transcription = Histogram("nimbuild_transcription_seconds", "Time to transcribe one file",
                                       buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=registry)


def add_routes(app: FastAPI, model: ServedModel, triton, state: dict, runtime_metrics: Metrics) -> None:
    from nimbuild.serving.audio import AudioError, read_audio

    metrics = SpeechMetrics(runtime_metrics.registry)
    runtime = model.info["runtime"]
    rate, max_seconds = int(runtime["sample_rate"]), float(runtime["max_seconds"])
    shortest = int(runtime["features"]["hop_length"])  # one feature frame
    streaming = model.info.get("mode") == "str"
    chunk_ms = int((runtime.get("streaming") or {}).get("chunk_ms") or 400)
    served_language = language_of(model)
    tasks = tasks_of(model)
    timed = runtime.get("prompt") is None  # Whisper profiles decode without timestamps: no word timings
    responses = {200: {"description": "The transcript, in the response_format asked for",
                       "content": {kind: {} for kind in RESPONSE_TYPES}}}

    @app.post("/v1/audio/transcriptions", openapi_extra=TRANSCRIPTION_API, responses=responses)
    async def transcriptions(request: Request):
        return await recognise(request, "transcribe")

    if "translate" in tasks:
        @app.post("/v1/audio/translations", openapi_extra=TRANSCRIPTION_API, responses=responses)
        async def translations(request: Request):
            """Speech in any language the model takes, transcribed in English (OpenAI's shape)."""
            return await recognise(request, "translate")

    async def recognise(request: Request, task: str):
        form = await _form(request)
        refuse_unknown_fields(form, TRANSCRIPTION_FIELDS)
        if not _is_zero(form.get("temperature") or "0"):
            raise ApiError(400, "temperature: this model decodes greedily, so only 0 is implemented", param="temperature")
        name = form.get("model")
        if isinstance(name, str) and name and name != model.name:
            raise ApiError(404, f"The model '{name}' does not exist; this service serves '{model.name}'",
                           param="model", code="model_not_found")
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "file: an audio file is required (multipart/form-data field 'file')", param="file")
        response_format = str(form.get("response_format") or "json")
        if response_format not in FORMATS:
            raise ApiError(400, f"response_format: expected one of {', '.join(FORMATS)}", param="response_format")
        granularities = [str(g) for g in form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities")]
        unknown = [g for g in granularities if g not in GRANULARITIES]
        if unknown:
            raise ApiError(400, f"timestamp_granularities[]: expected word or segment, got {', '.join(unknown)}",
                           param="timestamp_granularities[]")
        if "word" in granularities and not timed:
            raise ApiError(400, "timestamp_granularities[]: this model gives no word timings (Whisper profiles decode "
                                "without timestamps); ask for segment", param="timestamp_granularities[]")
        try:
            language = requested_language(model, str(form.get("language") or ""))
            translation_source(model, task, language)
        except SpeechError as e:
            raise ApiError(400, f"language: {e}", param="language") from None
        try:
            # decoding and resampling are CPU work: off the event loop, so other requests keep flowing
            audio = await asyncio.to_thread(read_audio, await upload.read(), rate, max_seconds)
        except AudioError as e:
            raise ApiError(400, f"file: {e}", param="file") from None
        if len(audio) < shortest:
            raise ApiError(400, f"file: the audio is shorter than one feature frame ({shortest} samples at {rate} Hz)",
                           param="file")
        require_ready(triton)
        start = time.perf_counter()
        result = await transcribe(state["grpc"], model.name, audio, model_options(model, task, language))
        metrics.audio_seconds.inc(len(audio) / rate)
        metrics.transcription.observe(time.perf_counter() - start)
        duration = round(len(audio) / rate, 3)
        if response_format == "text":
            return PlainTextResponse(result.text + "\n")
        if response_format in ("srt", "vtt"):
            return PlainTextResponse(subtitles(result, duration, response_format),
                                     media_type="text/vtt" if response_format == "vtt" else "application/x-subrip")
        if response_format == "verbose_json":
            body = {"task": task, "language": result.language or served_language, "duration": duration, "text": result.text,
                    "segments": [{"id": i, "seek": 0, "start": a, "end": b, "text": t}
                                 for i, (t, a, b) in enumerate(segments(result, duration))]}
            if "word" in granularities:
                body["words"] = [{"word": w, "start": a / 1000, "end": b / 1000, "confidence": c}
                                 for w, a, b, c in result.words]
            return body
        return {"text": result.text}

    @app.post("/v1/audio/transcriptions/stream", openapi_extra=STREAM_API,
              responses={200: {"description": "Server-sent events: the transcript so far per chunk, then the final one",
                               "content": {"text/event-stream": {}}}})
    async def stream(request: Request):
        if not streaming:
            raise ApiError(404, "this profile is served offline (mode ofl); streaming needs a mode=str profile "
                                "(NIM_TAGS_SELECTOR=mode=str)", code="not_found")
        refuse_unknown_fields(request.query_params, ("sample_rate",))
        source_rate = _sample_rate(request.query_params.get("sample_rate"), rate)
        require_ready(triton)
        session = StreamSession(state["grpc"], model.name, source_rate, rate, chunk_ms,
                                model_options(model, "transcribe", None))  # a language to detect, where one is taken
        return _DuplexStream(_stream_events(request, session, source_rate, metrics, stream_seconds(model)),
                             media_type="text/event-stream")


def _is_zero(value) -> bool:
    try:
        return float(str(value)[:64]) == 0
    except ValueError:
        return False


def segments(result: Transcript, duration: float) -> list[tuple[str, float, float]]:
    """(text, start s, end s) cues: words grouped until CUE_WORDS of them or a pause of CUE_GAP_MS;
    the whole clip as one segment when there are no words."""
    if not result.words:
        return [(result.text, 0.0, duration)] if result.text else []
    cues, current = [], []
    for word in result.words:
        if current and (len(current) >= CUE_WORDS or word[1] - current[-1][2] >= CUE_GAP_MS):
            cues.append(current)
            current = []
        current.append(word)
    cues.append(current)
    return [(" ".join(w[0] for w in cue), cue[0][1] / 1000, cue[-1][2] / 1000) for cue in cues]


def subtitles(result: Transcript, duration: float, kind: str) -> str:
    def stamp(seconds: float) -> str:
        ms = int(round(seconds * 1000))
        h, m, s = ms // 3_600_000, ms // 60_000 % 60, ms // 1000 % 60
        return f"{h:02d}:{m:02d}:{s:02d}{',' if kind == 'srt' else '.'}{ms % 1000:03d}"

    cues = [f"{stamp(a)} --> {stamp(b)}\n{text}\n" for text, a, b in segments(result, duration)]
    if kind == "vtt":
        return "WEBVTT\n\n" + "\n".join(cues)
    return "\n".join(f"{i}\n{cue}" for i, cue in enumerate(cues, 1))


async def _stream_events(request: Request, session: StreamSession, source_rate: int,
                         metrics: SpeechMetrics, max_seconds: float) -> AsyncIterator[bytes]:
    """Chunks of the request body in, one SSE event per chunk out. The body is read as it arrives,
    ahead of decoding, so its bounds (MAX_STREAM_SECONDS of audio, and the body limit every request
    has, http.py) end the stream as soon as the client passes them."""
    budget = AudioBudget(max_seconds)
    pieces = read_ahead(request.stream(), len, lambda piece: budget.take(piece, source_rate))
    try:
        async for piece in pieces:
            for partial in await session.push(piece):
                yield _event({"text": partial.text, "is_final": False})
        final = await session.finish()
        metrics.audio_seconds.inc(session.seconds)
        yield _event({"text": final.text, "is_final": True})
        yield b"data: [DONE]\n\n"
    except SpeechError as e:
        yield _event({"error": {"message": str(e), "type": "invalid_request_error"}})
    except BodyTooLarge as e:
        yield _event({"error": {"message": f"the stream is a {e.detail}", "type": "invalid_request_error"}})
    except ApiError as e:
        yield _event({"error": {"message": e.message, "type": e.kind}})
    except ClientDisconnect:
        pass
    finally:
        await pieces.aclose()
        await session.close()


def _event(data: dict) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


class _DuplexStream(StreamingResponse):
    """Streams events while the request body is still arriving. Starlette's StreamingResponse
    listens for the client's disconnect by reading the ASGI receive channel, which would swallow
    the audio still to come; here only the event generator reads the request (it sees the
    disconnect itself), and the generator is closed, ending the Triton sequence, whatever happens."""

    async def __call__(self, scope, receive, send):
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await self.body_iterator.aclose()


async def _form(request: Request):
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, "send multipart/form-data with the audio in the field 'file'")
    try:
        return await request.form(max_files=1, max_fields=16)
    except BodyTooLarge:
        raise
    except Exception as e:  # python-multipart's parse errors, or a body over the part limits
        raise ApiError(400, f"the multipart body cannot be read: {e}") from None


def _sample_rate(value: str | None, default: int) -> int:
    if value is None:
        return default
    if not value.isdigit() or not 8000 <= int(value) <= 192000:
        raise ApiError(400, "sample_rate: expected an integer from 8000 to 192000", param="sample_rate")
    return int(value)
