"""Text for a character-level spectrogram generator: sentence splitting, normalisation, tokens.

The same code runs where the profile is built (its tokens are checked against NeMo's own parser
on the recipe's texts) and inside Triton's Python backend, where it is copied beside the model
(standard library only).

Normalisation, as the profile records it (`text_normalization`):
- lower case, every run of whitespace one space;
- each digit spoken on its own ("5551234" -> "five five five one two three four"), as phone
  numbers and codes are read; NeMo's English cleaner would say "five million, ..." instead, and
  Riva's WFST normaliser is not installed here (nemo_text_processing);
- characters outside the voice's alphabet dropped, as NeMo's character parser drops them.

Sentences: text is cut after `.`, `!`, `?`, `;` or a line break; a normalised sentence longer
than the profile's limit is cut at the last space before it, never inside a word. A word longer than the
limit is refused (the caller answers 400 / INVALID_ARGUMENT).
"""

from __future__ import annotations

import re

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NORMALISATION = ("lower case; digits spoken one by one; characters outside the alphabet transliterated to ASCII "
                 "(text-unidecode, as NeMo's parser does), then dropped if still outside")
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+")


class TextError(ValueError):
    """Text that cannot be spoken as given; the message says why."""


def normalise(text: str, alphabet: str | set) -> str:
    from text_unidecode import unidecode

    spoken = re.sub(r"\d", lambda m: f" {DIGIT_WORDS[int(m.group())]} ", text.lower())
    # "fünf" is "funf" to a voice whose alphabet has no ü, as NeMo's parser reads it
    ascii_ = "".join(c if c in alphabet or c.isspace() else unidecode(c).lower() for c in spoken)
    kept = "".join(c if c in alphabet or c.isspace() else "" for c in ascii_)
    return " ".join(kept.split())


def tokens(text: str, labels: list[str]) -> list[int]:
    """Ids of a normalised text's characters, as NeMo's character parser numbers its labels."""
    index = {label: i for i, label in enumerate(labels)}
    return [index[c] for c in text if c in index]


def spell(ids: list[int], labels: list[str]) -> str:
    """The text of token ids (an id outside the labels as `?`)."""
    return "".join(labels[i] if 0 <= i < len(labels) else "?" for i in ids)


def split_finished(text: str) -> tuple[str, str]:
    """(the text up to its last sentence end, what follows): for text that arrives in pieces,
    what can be spoken now and what waits for more."""
    ends = list(_SENTENCE_END.finditer(text))
    if not ends:
        return "", text
    return text[:ends[-1].start()], text[ends[-1].end():]


def sentences(text: str, alphabet: str | set, limit: int) -> list[str]:
    """The text's sentences, normalised, none longer than `limit` characters (the profile's
    longest input, counted after normalisation: digits grow into words), empty ones dropped."""
    out = []
    for sentence in _SENTENCE_END.split(text):
        sentence = normalise(sentence, alphabet)
        while len(sentence) > limit:
            cut = sentence.rfind(" ", 0, limit + 1)
            if cut <= 0:
                word = sentence.split(" ", 1)[0]
                raise TextError(f"the word {word[:40]!r}{'...' if len(word) > 40 else ''} has {len(word)} characters; "
                                f"a sentence may have at most {limit}")
            out.append(sentence[:cut])
            sentence = sentence[cut + 1:]
        if sentence:
            out.append(sentence)
    return out
