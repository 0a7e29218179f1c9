"""Text in and out of a translation model: MarianMT's SentencePiece tokenisation, and the phrases
a client asks to keep untranslated.

Tokenisation is MarianTokenizer's, read from the same files (source.spm, target.spm, vocab.json)
with sentencepiece alone, so the runtime needs no transformers; the build checks it equal to
MarianTokenizer on the recipe's texts and on the translations the model makes of them.

Do-not-translate phrases (Riva's `dnt_phrases`, "phrase##translation" or a bare phrase, and
Riva Translate's inline `<dnt>phrase</dnt>` tags) are each replaced by a placeholder piece the
model learned to copy through (`<dnt0>`, `<dnt1>`, ...: user-defined pieces of its SentencePiece
model); after translation each placeholder becomes the phrase again, or the translation the
client gave for it. A model without placeholders cannot keep phrases, and says so.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

PLACEHOLDER = re.compile(r"^<dnt\d+>$")
INLINE_DNT = re.compile(r"<dnt>(.*?)</dnt>", re.DOTALL)


class TranslationTextError(ValueError):
    """Text the model cannot take; the message says why."""


class MarianText:
    """MarianTokenizer's encode and decode over its own files."""

    def __init__(self, directory: Path):
        import sentencepiece

        directory = Path(directory)
        self.source = sentencepiece.SentencePieceProcessor(model_file=str(directory / "source.spm"))
        self.target = sentencepiece.SentencePieceProcessor(model_file=str(directory / "target.spm"))
        self.vocab: dict[str, int] = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
        self.pieces = {i: p for p, i in self.vocab.items()}
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
        self.eos = self.vocab[config.get("eos_token", "</s>")]
        self.unk = self.vocab[config.get("unk_token", "<unk>")]
        self.pad = self.vocab[config.get("pad_token", "<pad>")]
        self.special = {self.eos, self.unk, self.pad}
        self.placeholders = sorted((p for p in self.vocab if PLACEHOLDER.match(p)), key=lambda p: int(p[4:-1]))

    def encode(self, text: str) -> list[int]:
        """Source ids, ending with end-of-sequence (what MarianTokenizer(text).input_ids gives)."""
        return [self.vocab.get(p, self.unk) for p in self.source.encode(text, out_type=str)] + [self.eos]

    def decode(self, ids: list[int]) -> str:
        """Target text, special tokens left out (batch_decode(..., skip_special_tokens=True))."""
        pieces = [self.pieces[i] for i in ids if i not in self.special and i in self.pieces]
        return self.target.decode_pieces(pieces).strip()


def parse_dnt_phrases(entries: list[str]) -> dict[str, str]:
    """Riva's dnt_phrases: each entry one or more comma-separated items (riva.client joins a
    dictionary as "a##b,c##"), each `phrase##translation` or a bare `phrase` (kept as it is)."""
    phrases: dict[str, str] = {}
    for entry in entries:
        for item in entry.split(","):
            phrase, _, translation = item.partition("##")
            if phrase.strip():
                phrases[phrase.strip()] = translation.strip() or phrase.strip()
    return phrases


@dataclass
class Protected:
    text: str  # the source with placeholders in place of the protected phrases
    restore: dict[str, str]  # placeholder -> what it becomes in the translation


def protect(text: str, phrases: dict[str, str], placeholders: list[str]) -> Protected:
    """Replace inline <dnt>..</dnt> spans and every occurrence of a dnt phrase (longest first, whole
    words) by placeholders; the same phrase shares one placeholder."""
    restore: dict[str, str] = {}
    by_phrase: dict[str, str] = {}

    def placeholder(phrase: str, becomes: str) -> str:
        if phrase not in by_phrase:
            if not placeholders:
                raise TranslationTextError("this model cannot keep phrases untranslated (it has no placeholder pieces, "
                                           "<dnt0>..); send no dnt_phrases or <dnt> tags")
            if len(by_phrase) == len(placeholders):
                raise TranslationTextError(f"a text may keep at most {len(placeholders)} distinct phrases "
                                           "untranslated with this model")
            by_phrase[phrase] = placeholders[len(by_phrase)]
            restore[by_phrase[phrase]] = becomes
        return f" {by_phrase[phrase]} "

    text = INLINE_DNT.sub(lambda m: placeholder(m.group(1).strip(), m.group(1).strip()), text)
    if "<dnt>" in text or "</dnt>" in text:
        raise TranslationTextError("a <dnt> tag is not closed (write <dnt>phrase</dnt>)")
    for phrase in sorted(phrases, key=len, reverse=True):
        pattern = re.compile(rf"(?<!\w){re.escape(phrase)}(?!\w)")
        text = pattern.sub(lambda m: placeholder(phrase, phrases[phrase]), text)
    return Protected(" ".join(text.split()), restore)


def restore(translation: str, protected: Protected) -> str:
    """Placeholders back to their phrases; one the model dropped is an error, not a silent loss."""
    for placeholder, becomes in protected.restore.items():
        if placeholder not in translation:
            raise TranslationTextError(f"the model dropped the placeholder for {becomes!r}; the phrase cannot be kept")
        translation = translation.replace(placeholder, becomes)
    return translation
