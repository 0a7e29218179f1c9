"""Greedy decoding over an encoder graph and a KV-cache decoder graph (translation and Whisper).

The same code runs the export's parity check (against `transformers.generate`) and the runtime's
Triton model, so the loop that was verified is the one that is served.

The graphs (nimbuild.export.translation):
- encoder: `input_ids [B, S]`, `attention_mask [B, S]` -> `cross.<layer>.key|value [B, heads, S, dim]`,
  the cross-attention keys and values of every decoder layer, projected once per source rather
  than at every step;
- decoder: `input_ids [B, T]`, `encoder_attention_mask [B, S]`, `past_key_values.<layer>.key|value
  [B, heads, P, dim]` (self-attention) and the cross keys and values -> the last position's
  `logits [B, 1, vocab]` and `present.<layer>.key|value` (P + T long).

A batch's rows all start from a prompt of one length (the decoder start token; Whisper's forced
tokens) and take one token per step, so they share positions and no decoder-side padding exists;
sources are right-padded and masked. A row that has finished (end-of-sequence, or its token budget)
leaves the batch: its rows of every cache are dropped, so the rest do not compute on its behalf.
Each step's logits go through the checkpoint's generation rules (DecodingRules) before the argmax,
as transformers' logits processors would change them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from nimbuild.serving.generation import CacheLayout, layer_order


class TranslationGraphs:
    """The two graphs behind anything with `run(output_names, feeds)`: an onnxruntime session or
    an engine runner. The layout is read from the decoder graph's own inputs."""

    def __init__(self, encoder, decoder):
        self.encoder, self.decoder = encoder, decoder
        self.cache = CacheLayout(decoder.get_inputs())
        self.cross_names = sorted((i.name for i in decoder.get_inputs() if i.name.startswith("cross.")), key=layer_order)
        self.output_names = ["logits", *self.cache.present_names]

    def encode(self, ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
        return list(self.encoder.run(self.cross_names, {"input_ids": ids, "attention_mask": mask}))

    def step(self, tokens: np.ndarray, mask: np.ndarray | None, past: list[np.ndarray],
             cross: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """The next-token logits [B, vocab] (fp32) and the grown self-attention cache."""
        feeds = {"input_ids": tokens, **dict(zip(self.cache.past_names, past)), **dict(zip(self.cross_names, cross))}
        if mask is not None:
            feeds["encoder_attention_mask"] = mask
        logits, *present = self.decoder.run(self.output_names, feeds)
        return np.asarray(logits, dtype=np.float32)[:, -1, :], present


@dataclass(frozen=True)
class DecodingRules:
    """What a checkpoint's generation config does to each greedy step, as transformers' logits
    processors do it (the export reads the config, refusing what it does not reproduce, and records
    this in model_info.json's `runtime.generation`; the parity check and the served model both
    decode with it). Lengths count as transformers counts them: the decoder's prompt (its start
    token, or Whisper's forced tokens) included."""

    eos: tuple[int, ...]  # a row ends on any of these
    suppress: tuple[int, ...] = ()  # never chosen: suppress_tokens and single-token bad_words_ids
    bad_sequences: tuple[tuple[int, ...], ...] = ()  # bad_words_ids of several tokens: the last one banned after the rest
    begin_suppress: tuple[int, ...] = ()  # not chosen as the first token after the prompt
    forced_bos: int | None = None  # chosen as the first token when the prompt is only the start token
    forced_eos: int | None = None  # chosen as the last token a row's budget allows
    no_repeat_ngram: int = 0  # no n-gram of this size twice
    min_length: int = 0  # no end token while the sequence (prompt included) is shorter

    @classmethod
    def from_record(cls, record: dict) -> "DecodingRules":
        return cls(eos=tuple(record["eos"]), suppress=tuple(record.get("suppress", ())),
                   bad_sequences=tuple(tuple(s) for s in record.get("bad_sequences", ())),
                   begin_suppress=tuple(record.get("begin_suppress", ())), forced_bos=record.get("forced_bos"),
                   forced_eos=record.get("forced_eos"), no_repeat_ngram=int(record.get("no_repeat_ngram", 0)),
                   min_length=int(record.get("min_length", 0)))

    def record(self) -> dict:
        return {"eos": list(self.eos), "suppress": list(self.suppress), "bad_sequences": [list(s) for s in self.bad_sequences],
                "begin_suppress": list(self.begin_suppress), "forced_bos": self.forced_bos, "forced_eos": self.forced_eos,
                "no_repeat_ngram": self.no_repeat_ngram, "min_length": self.min_length}

    def apply(self, logits: np.ndarray, sequence: list[int], prompt_length: int, last: bool) -> None:
        """Mask one row's logits [vocab] in place. `sequence` is the row's decoder tokens so far
        (prompt included); `last` says this step is the last its budget allows."""
        length = len(sequence)
        if self.suppress:
            logits[list(self.suppress)] = -np.inf
        for bad in self.bad_sequences:
            if tuple(sequence[length - len(bad) + 1:]) == bad[:-1]:
                logits[bad[-1]] = -np.inf
        if self.no_repeat_ngram and length + 1 >= self.no_repeat_ngram:
            n = self.no_repeat_ngram
            tail = tuple(sequence[length - n + 1:])
            for i in range(length - n + 1):
                if tuple(sequence[i:i + n - 1]) == tail:
                    logits[sequence[i + n - 1]] = -np.inf
        if length < self.min_length:
            logits[list(self.eos)] = -np.inf
        begin = prompt_length + (1 if prompt_length == 1 and self.forced_bos is not None else 0)
        if self.begin_suppress and length == begin:
            logits[list(self.begin_suppress)] = -np.inf
        forced = (self.forced_bos if length == 1 and self.forced_bos is not None
                  else self.forced_eos if last and self.forced_eos is not None else None)
        if forced is not None:  # transformers forces after the masks: nothing else is left
            logits[:] = -np.inf
            logits[forced] = 0.0


def greedy_settings(runtime: dict) -> dict:
    """greedy()'s start token and rules from the export's `runtime` record (model_info.json): the
    parity check and the served model both read them from there, so the build checks what is
    served. Profiles built before the rules were recorded ban their pad token and nothing else."""
    if "generation" in runtime:
        rules = DecodingRules.from_record(runtime["generation"])
    else:
        rules = DecodingRules(eos=(int(runtime["eos_token_id"]),), suppress=tuple(runtime["banned_token_ids"]))
    return dict(start=int(runtime["decoder_start_token_id"]), pad=int(runtime["pad_token_id"]), rules=rules)


def padded(rows: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded source ids and their mask, as Marian's tokenizer pads."""
    longest = max(len(r) for r in rows)
    ids = np.full((len(rows), longest), pad, np.int64)
    mask = np.zeros((len(rows), longest), np.int64)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask


def greedy(graphs: TranslationGraphs, rows: list[list[int]], budgets: list[int], *, start: int, pad: int,
           rules: DecodingRules, on_logits: Callable[[int, np.ndarray], None] | None = None) -> list[list[int]]:
    """Each source row's greedy output tokens (the end token kept when reached, as
    `transformers.generate` keeps it), at most `budgets[i]` tokens, decoded from the start token
    under `rules`. `on_logits(row, logits)` sees every step's raw logits, for parity checks."""
    ids, mask = padded(rows, pad)
    return decode(graphs, graphs.encode(ids, mask), mask, [[start]] * len(rows), budgets, rules, on_logits)


def decode(graphs: TranslationGraphs, cross: list[np.ndarray], mask: np.ndarray | None, prompts: list[list[int]],
           budgets: list[int], rules: DecodingRules,
           on_logits: Callable[[int, np.ndarray], None] | None = None) -> list[list[int]]:
    """The greedy loop over encoded rows: each row's decoder starts from its prompt (the prompts
    have one length: they are fed as one block) and takes a token a step; a finished row (an end
    token, or its budget) leaves every cache, so the rest do not compute on its behalf. `mask` is
    the sources' padding mask, None where the decoder takes none (Whisper's 30 s windows)."""
    outputs: list[list[int]] = [[] for _ in prompts]
    alive = np.array([i for i, b in enumerate(budgets) if b > 0], np.int64)
    if len(alive) < len(prompts):
        cross = [c[alive] for c in cross]
        mask = None if mask is None else mask[alive]
    past = graphs.cache.empty(len(alive))
    tokens = np.asarray([prompts[i] for i in alive], np.int64).reshape(len(alive), -1)
    width = tokens.shape[1]
    eos = set(rules.eos)
    while len(alive):
        logits, past = graphs.step(tokens, mask, past, cross)
        keep, chosen = [], np.empty(len(alive), np.int64)
        for k, row in enumerate(alive):
            if on_logits:
                on_logits(int(row), logits[k])
            out = outputs[row]
            rules.apply(logits[k], prompts[row] + out, width, last=len(out) + 1 >= budgets[row])
            chosen[k] = int(np.argmax(logits[k]))
            out.append(int(chosen[k]))
            if chosen[k] not in eos and len(out) < budgets[row]:
                keep.append(k)
        if len(keep) < len(alive):  # finished rows leave every cache
            index = np.asarray(keep, np.int64)
            alive, chosen = alive[index], chosen[index]
            mask = None if mask is None else mask[index]
            past, cross = [p[index] for p in past], [c[index] for c in cross]
        tokens = chosen.reshape(-1, 1)
    return outputs
