"""Whisper's greedy decoding over its two graphs (nimbuild.export.whisper), shared by the build's
parity check and the runtime's Triton model: the batch's clips encoded together, the language of
each clip that names none detected from one decoder step (the most likely language token, as
transformers' detect_language picks it), then the greedy loop of nimbuild.serving.seq2seq from
each clip's forced prompt under the checkpoint's generation rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nimbuild.serving.seq2seq import DecodingRules, TranslationGraphs, decode
from nimbuild.serving.whisper_audio import batch_features


class WhisperDecoder:
    def __init__(self, graphs: TranslationGraphs, runtime: dict):
        self.graphs, self.prompt = graphs, runtime["prompt"]
        self.rules = DecodingRules.from_record(runtime["generation"])

    def decode(self, features: np.ndarray, languages: list[str | None], tasks: list[str],
               budgets: list[int]) -> list[tuple[list[int], str | None]]:
        """Each clip's output tokens (after the prompt, without the end token) and the language it
        was decoded as (None for English-only checkpoints)."""
        cross = list(self.graphs.encoder.run(self.graphs.cross_names, {"input_features": features}))
        if self.prompt["multilingual"]:
            languages = self._detected(cross, languages)
        prompts = [self._prompt(language, task) for language, task in zip(languages, tasks)]
        outputs = decode(self.graphs, cross, None, prompts, budgets, self.rules)
        ends = set(self.rules.eos)  # transformers' Whisper generate returns a transcript without its end token
        outputs = [tokens[:-1] if tokens and tokens[-1] in ends else tokens for tokens in outputs]
        return list(zip(outputs, languages if self.prompt["multilingual"] else [None] * len(outputs)))

    def _prompt(self, language: str | None, task: str) -> list[int]:
        p = self.prompt
        if not p["multilingual"]:
            return [p["start"], p["no_timestamps"]]
        return [p["start"], p["languages"][language], p["tasks"][task], p["no_timestamps"]]

    def _detected(self, cross: list[np.ndarray], languages: list[str | None]) -> list[str]:
        unknown = [i for i, language in enumerate(languages) if language is None]
        if not unknown:
            return list(languages)
        rows = np.asarray(unknown, np.int64)
        start = np.full((len(rows), 1), self.prompt["start"], np.int64)
        logits, _ = self.graphs.step(start, None, self.graphs.cache.empty(len(rows)), [c[rows] for c in cross])
        codes = sorted(self.prompt["languages"], key=self.prompt["languages"].get)  # ties go to the lowest id, as argmax
        ids = np.asarray([self.prompt["languages"][c] for c in codes], np.int64)
        found = dict(zip(unknown, (codes[int(k)] for k in np.argmax(logits[:, ids], axis=1))))
        return [found.get(i, language) for i, language in enumerate(languages)]


def chunk_spans(samples: int, window: int, stride: int) -> list[tuple[int, int]]:
    """(start, end) of the pieces a clip longer than one window is cut into, as transformers' ASR
    pipeline cuts it (`chunk_length_s` one window, `stride_length_s` its sixth, by default): windows
    that overlap their neighbours by `stride` samples on each side, the last one shorter."""
    spans = []
    for start in range(0, samples, window - 2 * stride):
        end = min(start + window, samples)
        if end - start > (stride if start else 0):  # a last piece inside the previous one's overlap adds nothing
            spans.append((start, end))
        if start + window >= samples:
            break
    return spans


def merge_overlapping(pieces: list[list[int]]) -> list[int]:
    """One token sequence from the transcripts of overlapping pieces, as the pipeline joins them:
    each next piece slides along the last one to the offset where the largest share of their
    overlap agrees (at least two tokens; a longer overlap wins a tie), and the overlap is split at
    its middle, the earlier piece's tokens kept before it and the later one's after."""
    merged, left = [], list(pieces[0])
    for right in pieces[1:]:
        best, cut = 0.0, (len(left), len(left), 0, 0)
        for shift in range(1, len(left) + len(right)):
            l0, l1 = max(0, len(left) - shift), min(len(left), len(left) + len(right) - shift)
            r0, r1 = max(0, shift - len(left)), min(len(right), shift)
            agree = sum(a == b for a, b in zip(left[l0:l1], right[r0:r1]))
            score = agree / shift + shift / 10000.0
            if agree > 1 and score > best:
                best, cut = score, (l0, l1, r0, r1)
        l0, l1, r0, r1 = cut
        merged += left[:(l0 + l1) // 2]
        left = right[(r0 + r1) // 2:]
    return merged + left


class WhisperSpeech:
    """Clips in, transcripts (or English translations) out, with the language each was decoded as:
    the front end, the decoder and the tokenizer's text, as the runtime's Triton model serves them.
    A clip longer than one window is cut into overlapping windows, each decoded as a clip of its
    own (its language detected on its own where none is given), and their text tokens joined, as
    transformers' pipeline does with `chunk_length_s` (nimbuild.export.whisper checks it against it)."""

    def __init__(self, graphs: TranslationGraphs, runtime: dict, root: Path, tokenizer: Path | None = None):
        from tokenizers import Tokenizer

        self.decoder, self.runtime, self.prompt = WhisperDecoder(graphs, runtime), runtime, runtime["prompt"]
        self.filters = np.load(root / runtime["features"]["filters"])
        self.tokenizer = Tokenizer.from_file(str(tokenizer or root / "tokenizer" / "tokenizer.json"))
        self.chunk = int(runtime["features"]["window_samples"])
        self.window = int(round(float(runtime["max_seconds"]) * int(runtime["sample_rate"])))  # the longest clip taken
        self.special = set(self.prompt.get("special_ids") or ())

    def problem(self, language: str | None, task: str, target: str | None = None) -> str | None:
        """Why a request cannot be decoded (None: it can)."""
        if target not in (None, "en") or (target == "en" and task != "translate" and language not in (None, "en")):
            return f"target_language {target}: Whisper writes the language spoken, or translates into English (task translate)"
        if self.prompt["multilingual"]:
            if language is not None and language not in self.prompt["languages"]:
                return f"language {language!r}: this model takes {', '.join(self.prompt['languages'])}"
            if task not in self.prompt["tasks"]:
                return f"task {task!r}: this model does {', '.join(self.prompt['tasks'])}"
        elif task != "transcribe" or language not in (None, "en"):
            return "this English-only model transcribes English"
        return None

    def transcribe(self, clips: list[np.ndarray], languages: list[str | None], tasks: list[str],
                   targets: list[str | None] | None = None) -> list[tuple[str, str]]:
        """Each clip's text and the language it was decoded as (problem() has refused what Whisper
        cannot write, so a target is English and the task says so)."""
        stride = round(self.chunk / 6)
        pieces = [[clip[a:b] for a, b in chunk_spans(len(clip), self.chunk, stride)] if len(clip) > self.chunk else [clip]
                  for clip in clips]
        rows = [(k, piece) for k, parts in enumerate(pieces) for piece in parts]
        decoded = self.decode([p for _, p in rows], [languages[k] for k, _ in rows], [tasks[k] for k, _ in rows])
        out = []
        for k, parts in enumerate(pieces):
            mine = [d for (owner, _), d in zip(rows, decoded) if owner == k]
            if len(parts) == 1:
                tokens = mine[0][0]
            else:  # the pipeline joins the pieces' text tokens: no special tokens, no timestamps
                tokens = merge_overlapping([[t for t in piece if t not in self.special and t <= self.prompt["no_timestamps"]]
                                            for piece, _ in mine])
            out.append((self.tokenizer.decode(tokens, skip_special_tokens=True).strip(), mine[0][1] or ""))
        return out

    def decode(self, clips: list[np.ndarray], languages: list[str | None], tasks: list[str]) -> list[tuple[list[int], str | None]]:
        """Each clip's tokens (one window at most) and language, in batches the encoder takes."""
        budget, size, out = int(self.runtime["max_output_tokens"]), int(self.runtime["max_batch"]), []
        for i in range(0, len(clips), size):
            features = batch_features(clips[i:i + size], self.filters, self.runtime["features"])
            out += self.decoder.decode(features, languages[i:i + size], tasks[i:i + size], [budget] * len(features))
        return out
