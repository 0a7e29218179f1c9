"""What Riva's translation front end needs besides the gRPC messages: the request checked against
the served language pair, texts tokenised with their do-not-translate phrases protected, and each
text as one Triton request (so texts of one call and of concurrent calls share batches). Errors a
client caused are TranslationError (INVALID_ARGUMENT); Triton failing is an ApiError 503
(UNAVAILABLE)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from nimbuild.serving.translation_text import MarianText, Protected, TranslationTextError, protect, restore
from runtime_min.grpc import NotFound
from runtime_min.http import triton_infer
from runtime_min.tasks import language_matches

MAX_TEXTS = 1024  # texts of one request; each is queued on its own, IN_FLIGHT at a time
MAX_TEXT_CHARACTERS = 10_000  # one text, before tokenisation: past it no text fits the source limit anyway
MAX_DNT_PHRASES = 256  # phrases of one request: each is searched for in every text
IN_FLIGHT = 32  # texts of one request queued in Triton at once: a long list must not crowd out other callers
DEFAULT_LENGTH_VARIATION = 20  # Riva Translate's: a translation may be this many tokens longer than its source


class TranslationError(ValueError):
    """A request the client can fix; the message says how."""


@dataclass
class Translator:
    model_name: str
    source_language: str
    target_language: str
    text: MarianText
    max_source_tokens: int
    max_output_tokens: int

    @classmethod
    def of(cls, model) -> "Translator":
        runtime = model.info["runtime"]
        return cls(model.name, runtime["source_language"], runtime["target_language"],
                   MarianText(model.workspace / "tokenizer"), int(runtime["max_source_tokens"]),
                   int(runtime["max_output_tokens"]))

    def check_model(self, model: str) -> None:
        """An empty model name asks for the served one, as Riva's clients send it."""
        if model and model != self.model_name:
            raise NotFound(f"model {model!r} is not served here; this server serves {self.model_name!r}")

    def check(self, model: str, source: str, target: str) -> None:
        self.check_model(model)
        if not (language_matches(source, self.source_language) and language_matches(target, self.target_language)):
            raise TranslationError(f"{source or '?'} -> {target or '?'} is not served; {self.model_name} translates "
                                   f"{self.source_language} -> {self.target_language}")

    def budget(self, variation: str) -> int:
        """Riva's max_len_variation: tokens a translation may have beyond its source's (20 if not given).
        A value past the profile's output length is taken as that length: it asks for no bound
        tighter than the one every translation here already has, so there is nothing to refuse."""
        if not variation.strip():
            return DEFAULT_LENGTH_VARIATION
        try:
            value = int(variation)  # a string past Python's digit limit is a ValueError too
        except ValueError:
            raise TranslationError(f"max_len_variation must be a whole number of tokens, got {variation[:40]!r}") from None
        if value < 0:
            raise TranslationError(f"max_len_variation must be 0 or more tokens, got {value}")
        return min(value, self.max_output_tokens)

    def prepare(self, texts: list[str], phrases: dict[str, str]) -> list[tuple[Protected, list[int]]]:
        """Each text with its phrases protected, and its source tokens; TranslationError naming the
        text that cannot be taken."""
        if not texts:
            raise TranslationError("texts is empty; send at least one text to translate")
        if len(texts) > MAX_TEXTS:
            raise TranslationError(f"{len(texts)} texts in one request; at most {MAX_TEXTS}")
        if len(phrases) > MAX_DNT_PHRASES:
            raise TranslationError(f"{len(phrases)} dnt_phrases in one request; at most {MAX_DNT_PHRASES}")
        prepared = []
        for i, text in enumerate(texts):
            if len(text) > MAX_TEXT_CHARACTERS:
                raise TranslationError(f"texts[{i}] has {len(text)} characters; at most {MAX_TEXT_CHARACTERS}")
            try:
                protected = protect(text, phrases, self.text.placeholders)
            except TranslationTextError as e:
                raise TranslationError(f"texts[{i}]: {e}") from None
            ids = self.text.encode(protected.text)
            if len(ids) > self.max_source_tokens:
                raise TranslationError(f"texts[{i}] is {len(ids)} tokens; this model takes at most "
                                       f"{self.max_source_tokens} per text (split it into sentences)")
            prepared.append((protected, ids))
        return prepared

    async def translate(self, client, prepared: list[tuple[Protected, list[int]]], variation: int) -> list[str]:
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one(i: int, protected: Protected, ids: list[int]) -> str:
            budget = min(self.max_output_tokens, len(ids) + variation)
            async with gate:
                tokens = await output_ids(client, self.model_name, ids, budget)
            try:
                return restore(self.text.decode(tokens), protected)
            except TranslationTextError as e:
                raise TranslationError(f"texts[{i}]: {e}") from None

        return list(await asyncio.gather(*(one(i, p, ids) for i, (p, ids) in enumerate(prepared))))


async def output_ids(client, model_name: str, ids: list[int], budget: int) -> list[int]:
    import tritonclient.grpc.aio as triton_grpc

    source = triton_grpc.InferInput("input_ids", [1, len(ids)], "INT64")
    source.set_data_from_numpy(np.asarray(ids, dtype=np.int64).reshape(1, -1))
    limit = triton_grpc.InferInput("max_tokens", [1, 1], "INT32")
    limit.set_data_from_numpy(np.array([[budget]], dtype=np.int32))
    result = await triton_infer(client, model_name, [source, limit], [triton_grpc.InferRequestedOutput("output_ids")])
    return result.as_numpy("output_ids").reshape(-1).tolist()
