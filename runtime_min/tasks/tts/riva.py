"""Riva's `nvidia.riva.tts.RivaSpeechSynthesis` over the served TTS profile, on the generated
servicer class that `nvidia-riva-client` ships, so Riva's own clients and `talk.py` work unchanged.

- `Synthesize`: the whole text's audio, 16-bit LINEAR_PCM (no header, as Riva answers) at
  `sample_rate_hz` (0: the voice's own), with `meta.text` and `meta.processed_text` (the
  normalised sentences, joined).
- `SynthesizeOnline`: a stream of requests in (text as it is written, e.g. by an LLM; Riva's
  client sends one request per text it is given), a stream of audio out: one response per
  sentence, sent as soon as that sentence is complete and made.
- `GetRivaSynthesisConfig`: the served model with `voice_name`, `subvoices` (`<subvoice>:0`),
  `language_code` and `sample_rate`, which talk.py's `--list-voices` joins into
  `<voice_name>.<subvoice>`.
Requests this voice cannot honour (another language or voice, OGGOPUS, zero-shot prompts, custom
pronunciation dictionaries) are INVALID_ARGUMENT with one message; a model that is not served is
NOT_FOUND; Triton being down is UNAVAILABLE.
"""

from __future__ import annotations

from nimbuild.serving.tts_text import spell, split_finished
from runtime_min.grpc import NotFound, abort_on_errors, enum_name
from runtime_min.http import ServedModel, require_ready
from runtime_min.streams import read_ahead
from runtime_min.tasks.tts.synthesize import MAX_TEXT_CHARACTERS, SynthesisError, TextBudget, Voice, pcm16, stream, synthesize


def add_servicers(server, model: ServedModel, triton, state: dict) -> None:
    from riva.client.proto import riva_tts_pb2_grpc

    riva_tts_pb2_grpc.add_RivaSpeechSynthesisServicer_to_server(_servicer(model, triton, state), server)


def _servicer(model: ServedModel, triton, state: dict):
    from riva.client.proto import riva_audio_pb2 as raudio
    from riva.client.proto import riva_tts_pb2 as rtts
    from riva.client.proto import riva_tts_pb2_grpc

    voice = Voice.of(model)
    Encoding = raudio.AudioEncoding

    def prepared(request) -> int:
        """The output rate for the request's settings, or SynthesisError naming what is not served."""
        if request.encoding not in (Encoding.ENCODING_UNSPECIFIED, Encoding.LINEAR_PCM):
            raise SynthesisError(f"encoding {enum_name(Encoding, request.encoding)} is not supported; this service returns LINEAR_PCM")
        if request.HasField("zero_shot_data") and request.zero_shot_data.audio_prompt:
            raise SynthesisError(f"{voice.full_name} is not a zero-shot voice; send no audio prompt")
        if request.custom_dictionary:
            raise SynthesisError("custom_dictionary: this voice reads characters, not phonemes; it takes no dictionary")
        if request.sample_rate_hz < 0:
            raise SynthesisError("sample_rate_hz must not be negative")
        rate = voice.check(request.language_code, request.voice_name, request.sample_rate_hz)
        require_ready(triton)
        return rate

    def meta(request, rows):
        processed = " ".join(spell(row, voice.labels) for row in rows)
        return rtts.SynthesizeSpeechResponseMetadata(text=request.text, processed_text=processed)

    class Servicer(riva_tts_pb2_grpc.RivaSpeechSynthesisServicer):
        async def Synthesize(self, request, context):
            async with abort_on_errors(context, (SynthesisError,)):
                rate = prepared(request)
                rows = voice.sentences(request.text)
                audio = await synthesize(state["grpc"], model.name, rows, rate)
                return rtts.SynthesizeSpeechResponse(audio=pcm16(audio), meta=meta(request, rows), id=request.id)

        async def SynthesizeOnline(self, request_iterator, context):
            """Text arrives as a stream of requests (the first one's settings hold for the stream;
            each piece ends at a word boundary): every sentence is spoken as soon as it is complete,
            and what is left when the requests end is spoken last."""
            async with abort_on_errors(context, (SynthesisError,)):
                # read as it arrives, ahead of synthesis: the stream's bound is judged on what was sent
                requests = read_ahead(request_iterator, lambda r: len(r.text), TextBudget().take)
                try:
                    async for response in self._online(requests):
                        yield response
                finally:
                    await requests.aclose()

        async def _online(self, requests):
            first, waiting, spoken = None, "", 0
            async for request in requests:
                if first is None:
                    first, rate = request, prepared(request)
                waiting = f"{waiting} {request.text}" if waiting else request.text
                if len(waiting) > MAX_TEXT_CHARACTERS:
                    raise SynthesisError(f"{len(waiting)} characters wait for a sentence end; at most "
                                         f"{MAX_TEXT_CHARACTERS}")
                finished, waiting = split_finished(waiting)
                async for response in self._spoken(finished, rate, first.id):
                    spoken += 1
                    yield response
            if first is None:
                raise SynthesisError("the stream ended before any SynthesizeSpeechRequest")
            async for response in self._spoken(waiting, rate, first.id):
                spoken += 1
                yield response
            if not spoken:
                raise SynthesisError("text has nothing this voice can say (no letters or digits)")

        async def _spoken(self, text: str, rate: int, request_id):
            rows = voice.sentences(text, empty_ok=True)
            if rows:
                async for audio in stream(state["grpc"], model.name, rows, rate):
                    yield rtts.SynthesizeSpeechResponse(audio=pcm16(audio), id=request_id)

        async def GetRivaSynthesisConfig(self, request, context):
            async with abort_on_errors(context, (SynthesisError,)):
                if request.model_name and request.model_name != model.name:
                    raise NotFound(f"model {request.model_name!r} is not served here; this server serves {model.name!r}")
                return rtts.RivaSynthesisConfigResponse(model_config=[rtts.RivaSynthesisConfigResponse.Config(
                    model_name=model.name, parameters={
                        "language_code": voice.language_code, "voice_name": voice.name,
                        "subvoices": f"{voice.subvoice}:0", "sample_rate": str(voice.sample_rate),
                        "type": "offline,online"})])

    return Servicer()
