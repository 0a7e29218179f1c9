"""Riva's `nvidia.riva.nmt.RivaTranslation` over the served translation profile, on the generated
servicer class that `nvidia-riva-client` ships, so Riva's own client and `nmt.py` work unchanged.

- `TranslateText`: `texts` translated in order (each its own Triton request, so they batch with
  each other and with concurrent calls), `dnt_phrases` ("phrase##translation" or a bare phrase,
  comma-separated, as riva.client joins a dictionary) and inline `<dnt>phrase</dnt>` kept out of
  the translation, `max_len_variation` the tokens a translation may add to its source's (20).
- `ListSupportedLanguagePairs`: the served model and its language pair.
- The speech-to-speech streams (`StreamingTranslateSpeechTo*`) need ASR and TTS in the same
  server; runtime_min serves one profile per instance, and the application composes them
  (examples/speech-to-speech/demo_s2s.py), so they answer UNIMPLEMENTED, saying so.
A language pair or model that is not served is INVALID_ARGUMENT or NOT_FOUND; Triton being down is
UNAVAILABLE.
"""

from __future__ import annotations

from nimbuild.serving.translation_text import parse_dnt_phrases
from runtime_min.grpc import abort_on_errors
from runtime_min.http import ServedModel, require_ready
from runtime_min.tasks.translation.translate import TranslationError, Translator


def add_servicers(server, model: ServedModel, triton, state: dict) -> None:
    from riva.client.proto import riva_nmt_pb2_grpc

    riva_nmt_pb2_grpc.add_RivaTranslationServicer_to_server(_servicer(model, triton, state), server)


def _servicer(model: ServedModel, triton, state: dict):
    import grpc
    from riva.client.proto import riva_nmt_pb2 as rnmt
    from riva.client.proto import riva_nmt_pb2_grpc

    translator = Translator.of(model)

    class Servicer(riva_nmt_pb2_grpc.RivaTranslationServicer):
        async def TranslateText(self, request, context):
            async with abort_on_errors(context, (TranslationError,)):
                translator.check(request.model, request.source_language, request.target_language)
                variation = translator.budget(request.max_len_variation)
                prepared = translator.prepare(list(request.texts), parse_dnt_phrases(list(request.dnt_phrases)))
                require_ready(triton)
                texts = await translator.translate(state["grpc"], prepared, variation)
                language = request.target_language or translator.target_language
                return rnmt.TranslateTextResponse(
                    translations=[rnmt.Translation(text=t, language=language) for t in texts], id=request.id)

        async def ListSupportedLanguagePairs(self, request, context):
            async with abort_on_errors(context, ()):
                translator.check_model(request.model)
                pair = rnmt.AvailableLanguageResponse.LanguagePair(src_lang=[translator.source_language],
                                                                   tgt_lang=[translator.target_language])
                return rnmt.AvailableLanguageResponse(languages={model.name: pair})

        async def StreamingTranslateSpeechToText(self, request_iterator, context):
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, _COMPOSED)

        async def StreamingTranslateSpeechToSpeech(self, request_iterator, context):
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, _COMPOSED)

    return Servicer()


_COMPOSED = ("speech translation streams need ASR and TTS in this server; runtime_min serves one profile per "
             "instance: call the ASR, translation and TTS services in turn (see examples/speech-to-speech/demo_s2s.py)")
