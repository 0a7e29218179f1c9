"""Canary's (NeMo `EncDecMultiTaskModel`) speech recognition and translation over its two graphs
(nimbuild.export.canary), shared by the build's parity check and the runtime's Triton model.

NeMo's front end (nimbuild.serving.audio, the CTC and transducer profiles' own) makes each clip's
features; the encoder graph takes the batch padded with its lengths and returns the encoded lengths
and every decoder layer's cross keys and values; the greedy loop of nimbuild.serving.seq2seq runs
from each clip's prompt, as NeMo's `GreedySequenceGenerator` does with `transcribe()`:
- the prompt is the checkpoint's prompt format filled in (`canary`: `<|startoftranscript|>
  <|src|> <|transcribe|/<|translate|> <|tgt|> <|pnc|>`; `canary2` adds the context, emotion,
  ITN, timestamp and diarization slots, left at NeMo's defaults): the build records the template
  and the special tokens' ids, and checks the filled prompts against NeMo's own prompt formatter;
- a clip's budget is NeMo's: `min(max_sequence_length, encoder frames + max_generation_delta)`
  positions, the prompt included (NeMo counts the padded batch's frames; the runtime counts each
  clip's own, which is what NeMo does for a batch of one, so a clip's transcript does not depend
  on what it was batched with);
- a clip shorter than a second is padded with silence on both sides to one, as `transcribe()` pads it;
- the output stops at the end token, which is dropped, as NeMo's hypotheses drop it;
- text is the aggregate tokenizer's pieces joined, `▁` made a space (AggregateTokenizer.ids_to_text),
  and the space a first piece leaves in front dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nimbuild.serving.audio import FrontEnd, encoded_lengths
from nimbuild.serving.seq2seq import DecodingRules, TranslationGraphs, decode


def prompt_ids(prompt: dict, source: str, target: str, pnc: bool = True) -> list[int]:
    """The decoder prompt for speech in `source` written out in `target` (the same language:
    transcription; another: translation), from the template the build recorded."""
    fill = {"{source}": f"<|{source}|>", "{target}": f"<|{target}|>",
            "{task}": "<|transcribe|>" if source == target else "<|translate|>",
            "{pnc}": "<|pnc|>" if pnc else "<|nopnc|>"}
    return [int(prompt["specials"][fill.get(token, token)]) for token in prompt["template"]]


class CanarySpeech:
    """Clips in, transcripts (or English translations) out, with the language each was decoded as."""

    def __init__(self, graphs: TranslationGraphs, runtime: dict, root: Path):
        self.graphs, self.runtime, self.prompt = graphs, runtime, runtime["prompt"]
        self.front = FrontEnd.load(runtime["features"], root)
        self.pieces = json.loads((root / runtime["vocabulary"]).read_text(encoding="utf-8"))["pieces"]
        self.rules = DecodingRules(eos=(int(self.prompt["eos"]),))
        self.window = int(runtime["max_seconds"] * runtime["sample_rate"])

    def problem(self, language: str | None, task: str, target: str | None = None) -> str | None:
        """Why a request cannot be decoded (None: it can): Canary writes the language spoken, or
        translates between English and another of its languages."""
        languages = self.prompt["languages"]
        for name, code in (("language", language), ("target_language", target)):
            if code is not None and code not in languages:
                return f"{name} {code!r}: this model takes {', '.join(languages)}"
        if task not in self.prompt["tasks"]:
            return f"task {task!r}: this model does {', '.join(self.prompt['tasks'])}"
        source = language or self.prompt["default_language"]
        written = self.target(source, task, target)
        if task == "translate" and written == source:
            return "translate: give the language spoken (language) and, from English, the one to write (target_language)"
        if written != source and "en" not in (source, written):
            return f"{source}->{written}: Canary translates into English or out of it"
        return None

    def target(self, source: str, task: str, target: str | None) -> str:
        """The language to write: the one asked for, else English for a translation, else the one spoken."""
        return target or ("en" if task == "translate" else source)

    def transcribe(self, clips: list[np.ndarray], languages: list[str | None], tasks: list[str],
                   targets: list[str | None] | None = None) -> list[tuple[str, str]]:
        """Each clip's text and the language it was decoded as (its source)."""
        sources = [language or self.prompt["default_language"] for language in languages]
        written = [self.target(s, task, t) for s, task, t in zip(sources, tasks, targets or [None] * len(clips))]
        tokens = self.decode(clips, [prompt_ids(self.prompt, s, t) for s, t in zip(sources, written)])
        return [(self.text(t), source) for t, source in zip(tokens, sources)]

    def decode(self, clips: list[np.ndarray], prompts: list[list[int]]) -> list[list[int]]:
        """Each clip's output tokens after its prompt, without the end token."""
        cross, mask, frames = self.encode(clips)
        budgets = [self.budget(int(n), len(p)) for n, p in zip(frames, prompts)]
        out = decode(self.graphs, cross, mask, prompts, budgets, self.rules)
        eos = set(self.rules.eos)
        return [tokens[:-1] if tokens and tokens[-1] in eos else tokens for tokens in out]

    def encode(self, clips: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """Cross keys and values for the clips as one padded batch, the encoder's padding mask, and
        the encoder frames each clip has alone: NeMo's preprocessor pads a clip's features by a
        frame or so past their length, and its budget counts the encoded frames of that padding."""
        clips = [self.padded(clip) for clip in clips]
        feats = [self.front(clip) for clip in clips]
        valid = np.asarray([self.front.frames(len(clip)) for clip in clips], np.int64)
        batch = np.zeros((len(feats), feats[0].shape[0], max(f.shape[1] for f in feats)), np.float32)
        for row, f in enumerate(feats):
            batch[row, :, :f.shape[1]] = f
        encoded, *cross = self.graphs.encoder.run(["encoded_lengths", *self.graphs.cross_names],
                                                  {"audio_signal": batch, "length": valid})
        mask = (np.arange(cross[0].shape[2])[None, :] < encoded[:, None]).astype(np.int64)
        alone = encoded_lengths(np.asarray([f.shape[1] for f in feats], np.int64), self.runtime["subsampling"])
        return cross, mask, alone

    def padded(self, clip: np.ndarray) -> np.ndarray:
        """A clip shorter than NeMo's `transcribe()` minimum (a second) with silence on both sides, as it pads them."""
        short = int(self.runtime["pad_min_samples"]) - len(clip)
        return np.pad(clip, (short // 2, short - short // 2)) if short > 0 else clip

    def budget(self, frames: int, prompt: int) -> int:
        """New tokens NeMo's greedy search allows a clip of `frames` encoded frames after a prompt."""
        longest, delta = int(self.runtime["max_sequence_length"]), int(self.runtime["max_generation_delta"])
        return max((min(longest, frames + delta) if delta >= 0 else longest) - prompt, 0)

    def text(self, tokens: list[int]) -> str:
        """NeMo's text for the tokens, without the space its first piece's `▁` leaves in front."""
        return "".join(self.pieces[t] for t in tokens if 0 <= t < len(self.pieces)).replace("▁", " ").strip()
