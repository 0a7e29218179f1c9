"""English -> German parallel text for the translation example, generated offline: what the
asr-digits example hears (digits and spoken commands, "call" and "dial" with numbers), numbers
written out as words by num2words in both languages (German writes 342 as one word that says
"three hundred two and forty": real reordering to learn), and commands with placeholders for
phrases a client asks to keep untranslated (Riva's dnt_phrases).

Held out: numbers whose seeded hash puts them in the held-out tenth are never trained on, so the
example's exact-match accuracy on them measures translation of phrases it has not seen. Used by
examples/nmt-en-de/make_nmt_en_de.py (training), the tests and the speech-to-speech demo.
"""

from __future__ import annotations

import random
import zlib

DIGITS = {"zero": "null", "oh": "null", "one": "eins", "two": "zwei", "three": "drei", "four": "vier",
          "five": "fünf", "six": "sechs", "seven": "sieben", "eight": "acht", "nine": "neun"}
COMMANDS = {"stop": "stopp", "go": "los", "yes": "ja", "no": "nein", "up": "hoch", "down": "runter",
            "left": "links", "right": "rechts", "on": "an", "off": "aus", "cancel": "abbrechen",
            "repeat": "wiederholen"}
# what the model learned to copy through: the runtime puts one in for each do-not-translate phrase
PLACEHOLDERS = ["<dnt0>", "<dnt1>", "<dnt2>"]
LARGEST = 9999


def held_out(number: int) -> bool:
    """A fixed tenth of the numbers, never trained on (a hash, so the split needs no stored list)."""
    return zlib.crc32(f"held-out {number}".encode()) % 10 == 0


def number_pair(number: int) -> tuple[str, str]:
    from num2words import num2words

    return num2words(number, lang="en"), num2words(number, lang="de")


def digits_pair(rng: random.Random, low: int = 1, high: int = 6) -> tuple[str, str]:
    words = [rng.choice(list(DIGITS)) for _ in range(rng.randint(low, high))]
    return " ".join(words), " ".join(DIGITS[w] for w in words)


def spoken_pair(rng: random.Random) -> tuple[str, str]:
    """A sentence of the words asr-digits hears: digits, commands, or "call"/"dial" and digits (the
    speech-to-speech demo's domain; examples/tts-digits/make_tts_digits.py --language de speaks its German)."""
    kind = rng.random()
    if kind < 0.4:
        return digits_pair(rng)
    if kind < 0.6:
        words = [rng.choice(list(COMMANDS)) for _ in range(rng.randint(1, 3))]
        return " ".join(words), " ".join(COMMANDS[w] for w in words)
    en, de = digits_pair(rng, 2, 5)
    return (f"call {en}", f"rufe {de} an") if rng.random() < 0.5 else (f"dial {en}", f"wähle {de}")


def pair(rng: random.Random, training: bool = True) -> tuple[str, str]:
    """One (English, German) sentence; numbers come from the training or the held-out side."""
    kind = rng.random()
    if kind < 0.40:
        while True:
            number = rng.randint(0, LARGEST) if rng.random() < 0.8 else rng.randint(0, 100)
            if held_out(number) != training:
                return number_pair(number)
    if kind < 0.88:
        return spoken_pair(rng)
    names = rng.sample(PLACEHOLDERS, rng.randint(1, 2))
    if len(names) == 2:
        return f"call {names[0]} and {names[1]}", f"rufe {names[0]} und {names[1]} an"
    name = names[0]
    return rng.choice([(f"call {name}", f"rufe {name} an"), (f"dial {name}", f"wähle {name}"),
                       (f"stop {name}", f"stopp {name}"), (f"{name} stop", f"{name} stopp"), (name, name)])


def held_out_numbers(count: int, seed: int = 7) -> list[tuple[str, str]]:
    """`count` distinct held-out numbers as (English, German), seeded."""
    pool = [n for n in range(LARGEST + 1) if held_out(n)]
    return [number_pair(n) for n in sorted(random.Random(seed).sample(pool, count))]
