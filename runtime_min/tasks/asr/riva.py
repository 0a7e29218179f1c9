"""Riva's `nvidia.riva.asr.RivaSpeechRecognition` over the served CTC profile, on the generated
servicer class that `nvidia-riva-client` ships, so Riva's own clients and example scripts work
unchanged.

- `Recognize`: one file. `LINEAR_PCM` at the stated `sample_rate_hertz` (16-bit, interleaved
  channels downmixed), `FLAC`/`OGGOPUS` and `ENCODING_UNSPECIFIED` with the container's header
  sniffed (Riva's scripts send file bytes, header included, and leave the encoding unset), G.711
  `MULAW`/`ALAW` at the stated rate. Any rate is resampled to the model's.
- `StreamingRecognize`: the first message carries the config, then audio pieces (raw PCM, or a
  16-bit PCM WAV whose header arrives in the first pieces). Each `chunk_ms` of audio gives an
  interim result (`is_final` false, `stability`) when `interim_results` is set; the end of the
  stream gives the final one. `audio_processed` is the seconds heard so far. Needs a `mode: str`
  profile.
- `GetRivaSpeechRecognitionConfig`: the served model, `type` offline (and online for a streaming
  profile), with `language_code`, as Riva's CLIs read them for `--list-models`.
- `enable_word_time_offsets` fills `words` (start and end in milliseconds) from the CTC best path;
  confidences are the best path's mean posterior over a word's frames (the alternative's: the
  mean over its words).
Bad input is INVALID_ARGUMENT (or NOT_FOUND for a model or mode not served) with one message;
Triton being down is UNAVAILABLE.
"""

from __future__ import annotations

import asyncio

import numpy as np

from runtime_min.grpc import NotFound, abort_on_errors, enum_name
from runtime_min.http import ServedModel, require_ready
from runtime_min.streams import read_ahead
from runtime_min.tasks.asr.transcribe import (
    SNIFFED,
    AudioBudget,
    SpeechError,
    StreamSession,
    Transcript,
    custom_configuration,
    decode_pcm16,
    language_of,
    model_options,
    requested_language,
    stream_seconds,
    transcribe,
    wav_header,
)

INTERIM_STABILITY = 0.5  # a CTC partial can still change as more audio arrives; a final cannot


def add_servicers(server, model: ServedModel, triton, state: dict) -> None:
    from riva.client.proto import riva_asr_pb2_grpc

    riva_asr_pb2_grpc.add_RivaSpeechRecognitionServicer_to_server(_servicer(model, triton, state), server)


def _servicer(model: ServedModel, triton, state: dict):
    from riva.client.proto import riva_asr_pb2 as rasr
    from riva.client.proto import riva_asr_pb2_grpc
    from riva.client.proto import riva_audio_pb2 as raudio

    runtime = model.info["runtime"]
    rate, max_seconds = int(runtime["sample_rate"]), float(runtime["max_seconds"])
    shortest = int(runtime["features"]["hop_length"])
    chunk_ms = int((runtime.get("streaming") or {}).get("chunk_ms") or 400)
    streaming = model.info.get("mode") == "str"
    language = language_of(model)
    Encoding = raudio.AudioEncoding

    def check(config, online: bool) -> dict[str, str] | None:
        """Refuse what the model cannot do (or what this server does not do: asked for, it is refused,
        never dropped); what to send the model beside the audio (model_options)."""
        if config.model and config.model != model.name:
            raise NotFound(f"model {config.model!r} is not served here; this server serves {model.name!r}")
        if online and not streaming:
            raise NotFound(f"{model.name} is served offline only (a mode=ofl profile); streaming recognition "
                            "needs a mode=str profile (NIM_TAGS_SELECTOR=mode=str)")
        try:
            code = requested_language(model, config.language_code)
        except SpeechError as e:
            raise SpeechError(f"language_code: {e}") from None
        if config.audio_channel_count < 0 or config.sample_rate_hertz < 0:
            raise SpeechError("sample_rate_hertz and audio_channel_count must not be negative")
        unsupported = [name for name, asked in (
            ("profanity_filter", config.profanity_filter), ("speech_contexts", len(config.speech_contexts)),
            ("diarization_config", config.diarization_config.enable_speaker_diarization)) if asked]
        if unsupported:
            raise SpeechError(f"{', '.join(unsupported)}: not supported by this server")
        task, code, target = custom_configuration(model, dict(config.custom_configuration), code)
        return model_options(model, task, code, target)

    def offline_audio(config, data: bytes) -> np.ndarray:
        from nimbuild.serving.audio import AudioError, read_audio, resample

        if not data:
            raise SpeechError("audio is empty")
        try:
            if data[:4] in SNIFFED or config.encoding in (Encoding.FLAC, Encoding.OGGOPUS):
                return read_audio(data, rate, max_seconds)
        except AudioError as e:
            raise SpeechError(str(e)) from None
        if config.encoding == Encoding.ENCODING_UNSPECIFIED:
            raise SpeechError("the audio has no WAV, FLAC or Ogg header; set encoding LINEAR_PCM and sample_rate_hertz")
        if not 8000 <= config.sample_rate_hertz <= 192000:
            raise SpeechError(f"sample_rate_hertz {config.sample_rate_hertz}: raw audio needs its rate, 8000 to 192000")
        channels = max(1, config.audio_channel_count)
        if config.encoding == Encoding.LINEAR_PCM:
            samples = decode_pcm16(data, channels)
        elif config.encoding in (Encoding.MULAW, Encoding.ALAW):
            samples = _g711(data, config.encoding == Encoding.MULAW, channels)
        else:
            raise SpeechError(f"encoding {enum_name(Encoding, config.encoding)} is not supported")
        if len(samples) / config.sample_rate_hertz > max_seconds:
            raise SpeechError(f"the audio is {len(samples) / config.sample_rate_hertz:.1f} s long; "
                              f"this model takes at most {max_seconds:.1f} s")
        return resample(samples, config.sample_rate_hertz, rate)

    def alternative(result: Transcript, words: bool):
        alt = rasr.SpeechRecognitionAlternative(transcript=result.text, confidence=result.confidence)
        if words:
            alt.words.extend(rasr.WordInfo(word=w, start_time=a, end_time=b, confidence=c) for w, a, b, c in result.words)
        return alt

    class Servicer(riva_asr_pb2_grpc.RivaSpeechRecognitionServicer):
        async def Recognize(self, request, context):
            async with abort_on_errors(context, (SpeechError,)):
                options = check(request.config, online=False)
                audio = await asyncio.to_thread(offline_audio, request.config, request.audio)
                if len(audio) < shortest:
                    raise SpeechError(f"the audio is shorter than one feature frame ({shortest} samples at {rate} Hz)")
                require_ready(triton)
                result = await transcribe(state["grpc"], model.name, audio, options)
                return rasr.RecognizeResponse(id=request.id, results=[rasr.SpeechRecognitionResult(
                    alternatives=[alternative(result, request.config.enable_word_time_offsets)], channel_tag=1,
                    audio_processed=len(audio) / rate)])

        async def StreamingRecognize(self, request_iterator, context):
            opened: list = []  # how to close this call's reader and session, however the call ends
            try:
                async for response in self._stream(request_iterator, context, opened):
                    yield response
            finally:  # the client went away, or the stream failed: Triton drops the sequence's state
                for close in opened:  # the reader of the client's stream, then the session
                    await close()

        async def _stream(self, request_iterator, context, opened: list):
            session = None
            async with abort_on_errors(context, (SpeechError,)):
                requests = aiter(request_iterator)
                first = await anext(requests, None)
                if first is None or not first.HasField("streaming_config"):
                    raise SpeechError("the first StreamingRecognizeRequest must carry streaming_config")
                config, interim = first.streaming_config.config, first.streaming_config.interim_results
                options = check(config, online=True)
                require_ready(triton)
                stream, budget = _Pcm(config, Encoding), AudioBudget(stream_seconds(model))

                async def audio():
                    async for request in requests:
                        if request.HasField("streaming_config"):
                            raise SpeechError("streaming_config may come only in the first request")
                        pcm = stream.feed(request.audio_content)
                        if pcm:
                            yield pcm

                # read as it arrives, ahead of decoding: the audio bound is judged on what was sent
                pieces = read_ahead(audio(), len, lambda pcm: budget.take(pcm, stream.rate))
                opened.append(pieces.aclose)
                async for pcm in pieces:
                    if session is None:
                        session = StreamSession(state["grpc"], model.name, stream.rate, rate, chunk_ms, options)
                        opened.append(session.close)
                    for partial in await session.push(pcm):
                        if interim:
                            yield rasr.StreamingRecognizeResponse(id=first.id, results=[rasr.StreamingRecognitionResult(
                                alternatives=[alternative(partial, False)], is_final=False,
                                stability=INTERIM_STABILITY, channel_tag=1, audio_processed=session.seconds)])
                if session is None:
                    raise SpeechError("the stream ended before any audio")
                final = await session.finish()
                yield rasr.StreamingRecognizeResponse(id=first.id, results=[rasr.StreamingRecognitionResult(
                    alternatives=[alternative(final, config.enable_word_time_offsets)], is_final=True,
                    channel_tag=1, audio_processed=session.seconds)])

        async def GetRivaSpeechRecognitionConfig(self, request, context):
            async with abort_on_errors(context, (SpeechError,)):
                if request.model_name and request.model_name != model.name:
                    raise NotFound(f"model {request.model_name!r} is not served here; this server serves {model.name!r}")
                kinds = ["offline", "online"] if streaming else ["offline"]
                return rasr.RivaSpeechRecognitionConfigResponse(model_config=[
                    rasr.RivaSpeechRecognitionConfigResponse.Config(model_name=model.name, parameters={
                        "type": kind, "language_code": language, "sample_rate": str(rate),
                        "streaming": "true" if kind == "online" else "false", "chunk_size": f"{chunk_ms / 1000:g}"})
                    for kind in kinds])

    return Servicer()


class _Pcm:
    """A stream's audio pieces as 16-bit mono PCM at `rate`: raw LINEAR_PCM as stated, or a WAV
    whose header (read from the first pieces) gives the rate and channels."""

    def __init__(self, config, Encoding):
        self.rate = config.sample_rate_hertz
        self.channels = max(1, config.audio_channel_count)
        self.header = b""
        self.waiting = config.encoding == Encoding.ENCODING_UNSPECIFIED  # a header must tell the rate
        if config.encoding not in (Encoding.ENCODING_UNSPECIFIED, Encoding.LINEAR_PCM):
            raise SpeechError(f"streaming takes LINEAR_PCM or a 16-bit PCM WAV, not {enum_name(Encoding, config.encoding)}")
        if not self.waiting and not 8000 <= self.rate <= 192000:
            raise SpeechError(f"sample_rate_hertz {self.rate}: LINEAR_PCM streams need their rate, 8000 to 192000")
        self.first = True
        self.rest = b""

    def feed(self, data: bytes) -> bytes:
        if self.first and (self.waiting or data[:4] == b"RIFF"):
            self.header += data
            found = wav_header(self.header)
            if found is None:
                if len(self.header) > 1 << 20:
                    raise SpeechError("no WAV header in the first MiB of the stream")
                return b""
            self.rate, self.channels, offset = found
            if not 8000 <= self.rate <= 192000:
                raise SpeechError(f"the WAV's sample rate {self.rate} is outside 8000 to 192000")
            data, self.header, self.waiting = self.header[offset:], b"", False
        self.first = False
        if self.channels == 1:
            return data
        frame = 2 * self.channels  # keep whole frames; the rest waits for the next piece
        data = self.rest + data
        whole = len(data) // frame * frame
        self.rest = data[whole:]
        mono = decode_pcm16(data[:whole], self.channels)
        return (np.clip(mono * 32768.0, -32768, 32767)).astype("<i2").tobytes()


def _g711(data: bytes, mulaw: bool, channels: int) -> np.ndarray:
    """ITU-T G.711 mu-law or A-law bytes -> float32 mono."""
    code = ~np.frombuffer(data, dtype=np.uint8) if mulaw else np.frombuffer(data, dtype=np.uint8) ^ 0x55
    code = code.astype(np.int32)
    sign = np.where(code & 0x80, -1.0, 1.0) if mulaw else np.where(code & 0x80, 1.0, -1.0)
    exponent, mantissa = (code >> 4) & 0x07, code & 0x0F
    if mulaw:
        magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    else:
        magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    samples = (sign * magnitude / 32768.0).astype(np.float32)
    whole = len(samples) // channels * channels
    return samples[:whole].reshape(-1, channels).mean(axis=1) if channels > 1 else samples
