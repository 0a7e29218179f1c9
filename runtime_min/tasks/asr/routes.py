"""Speech endpoints for asr-ctc profiles.

`POST /v1/audio/transcriptions`: OpenAI's multipart shape (`file`, `model`, `language`,
`response_format` json | text | verbose_json, `temperature` accepted and ignored as greedy CTC
has no sampling). The file is any WAV/FLAC/OGG soundfile reads, at any sample rate, mono or
stereo: it is downmixed and resampled here, then sent to the Triton ensemble (features ->
encoder -> CTC decoder).

`POST /v1/audio/transcriptions/stream` (profiles with `mode: str`): the request body is raw
16-bit little-endian mono PCM, sent as it is captured (chunked transfer encoding), at the rate in
`?sample_rate=` (default: the model's). Every `chunk_ms` of audio goes to the sequence-batched
Triton model under one correlation id (start and end flags on the first and last chunk), and the
response streams a server-sent event with the transcript so far after each chunk, then one with
`"is_final": true` and `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from typing import AsyncIterator

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.requests import ClientDisconnect

from prometheus_client import Counter, Histogram

from runtime_min.http import MAX_BODY_BYTES, ApiError, Metrics, ServedModel, require_ready, triton_infer

FORMATS = ("json", "text", "verbose_json")
_correlation = itertools.count(int.from_bytes(os.urandom(3), "big") << 20)


class SpeechMetrics:
    def __init__(self, registry):
        self.audio_seconds = Counter("nimbuild_audio_seconds_total", "Seconds of audio transcribed", registry=registry)
        self.transcription = Histogram("nimbuild_transcription_seconds", "Time to transcribe one file",
                                       buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=registry)


def add_routes(app: FastAPI, model: ServedModel, triton, state: dict, runtime_metrics: Metrics) -> None:
    from nimbuild.audio import AudioError, read_audio

    metrics = SpeechMetrics(runtime_metrics.registry)

    runtime = model.info["runtime"]
    rate, max_seconds = int(runtime["sample_rate"]), float(runtime["max_seconds"])
    shortest = int(runtime["features"]["hop_length"])  # one feature frame
    streaming = model.info.get("mode") == "str"
    chunk_ms = int((runtime.get("streaming") or {}).get("chunk_ms") or 400)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request):
        form = await _form(request)
        name = form.get("model")
        if isinstance(name, str) and name and name != model.name:
            raise ApiError(404, f"The model '{name}' does not exist; this service serves '{model.name}'",
                           param="model", code="model_not_found")
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "file: an audio file is required (multipart/form-data field 'file')", param="file")
        response_format = str(form.get("response_format") or "json")
        if response_format not in FORMATS:
            raise ApiError(400, f"response_format: expected one of {', '.join(FORMATS)} (srt and vtt are not supported)",
                           param="response_format")
        language = str(form.get("language") or "en")
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
        text = await _infer(state["client"], model.name, "audio", audio)
        metrics.audio_seconds.inc(len(audio) / rate)
        metrics.transcription.observe(time.perf_counter() - start)
        if response_format == "text":
            return PlainTextResponse(text + "\n")
        if response_format == "verbose_json":
            duration = round(len(audio) / rate, 3)
            return {"task": "transcribe", "language": language, "duration": duration, "text": text,
                    "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": duration, "text": text}]}
        return {"text": text}

    @app.post("/v1/audio/transcriptions/stream")
    async def stream(request: Request):
        if not streaming:
            raise ApiError(404, "this profile is served offline (mode ofl); streaming needs a mode=str profile "
                                "(NIM_TAGS_SELECTOR=mode=str)", code="not_found")
        source_rate = _sample_rate(request.query_params.get("sample_rate"), rate)
        require_ready(triton)
        chunk_bytes = 2 * max(1, source_rate * chunk_ms // 1000)
        return _DuplexStream(_stream_events(request, state["client"], model, source_rate, rate, chunk_bytes,
                                            max_seconds, metrics),
                             media_type="text/event-stream")


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
    except Exception as e:  # python-multipart's parse errors, or a body over the part limits
        raise ApiError(400, f"the multipart body cannot be read: {e}") from None


def _sample_rate(value: str | None, default: int) -> int:
    if value is None:
        return default
    if not value.isdigit() or not 8000 <= int(value) <= 192000:
        raise ApiError(400, "sample_rate: expected an integer from 8000 to 192000", param="sample_rate")
    return int(value)


async def _infer(client, model_name: str, name: str, audio: np.ndarray, **sequence) -> str:
    import tritonclient.http.aio as triton_http

    tensor = triton_http.InferInput(name, [1, len(audio)], "FP32")
    tensor.set_data_from_numpy(audio.reshape(1, -1).astype(np.float32), binary_data=True)
    result = await triton_infer(client, model_name, [tensor], [triton_http.InferRequestedOutput("text", binary_data=True)],
                                **sequence)
    return result.as_numpy("text").reshape(-1)[0].decode()


async def _stream_events(request: Request, client, model: ServedModel, source_rate: int, rate: int, chunk_bytes: int,
                         max_seconds: float, metrics: SpeechMetrics) -> AsyncIterator[bytes]:
    """Chunks of the request body in, one SSE event per chunk out; the sequence always ends (END
    flag) so Triton drops its state, even when the client sends too much or goes away."""
    from nimbuild.audio import StreamResampler
    from runtime_min.tasks.asr import stream_model_name

    corrid, name = next(_correlation), stream_model_name(model.name)
    pending, received, first, ended = b"", 0, True, False
    resampler = StreamResampler(source_rate, rate)  # the same samples the whole file would give

    async def send(data: bytes, end: bool) -> str:
        nonlocal first, ended
        samples = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
        ended = ended or end
        result = await _infer(client, name, "audio_chunk", resampler.push(samples, final=end),
                              sequence_id=corrid, sequence_start=first, sequence_end=end)
        first = False
        return result

    try:
        async for piece in request.stream():
            pending += piece
            received += len(piece)
            if received > MAX_BODY_BYTES or received / 2 / source_rate > max_seconds:
                await send(b"", True)
                yield _event({"error": {"message": f"the stream is over {max_seconds:.1f} s of audio", "type": "invalid_request_error"}})
                return
            while len(pending) >= chunk_bytes:
                chunk, pending = pending[:chunk_bytes], pending[chunk_bytes:]
                text = await send(chunk, False)
                yield _event({"text": text, "is_final": False})
        text = await send(pending, True)
        metrics.audio_seconds.inc(received / 2 / source_rate)
        yield _event({"text": text, "is_final": True})
        yield b"data: [DONE]\n\n"
    except ApiError as e:
        yield _event({"error": {"message": e.message, "type": e.kind}})
    except ClientDisconnect:
        pass
    finally:
        if not ended and not first:  # end the sequence so the model drops what it kept for it
            try:
                await send(b"", True)
            except ApiError:
                pass


def _event(data: dict) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()
