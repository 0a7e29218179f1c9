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


class WhisperSpeech:
    """Clips in, transcripts (or English translations) out, with the language each was decoded as:
    the front end, the decoder and the tokenizer's text, as the runtime's Triton model serves them."""

    def __init__(self, graphs: TranslationGraphs, runtime: dict, root: Path):
        from tokenizers import Tokenizer

        self.decoder, self.runtime, self.prompt = WhisperDecoder(graphs, runtime), runtime, runtime["prompt"]
        self.filters = np.load(root / runtime["features"]["filters"])
        self.tokenizer = Tokenizer.from_file(str(root / "tokenizer" / "tokenizer.json"))
        self.window = int(runtime["features"]["window_samples"])

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
        features = batch_features(clips, self.filters, self.runtime["features"])
        budget = int(self.runtime["max_output_tokens"])
        decoded = self.decoder.decode(features, languages, tasks, [budget] * len(clips))
        return [(self.tokenizer.decode(tokens, skip_special_tokens=True).strip(), language or "")
                for tokens, language in decoded]
