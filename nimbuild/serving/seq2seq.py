"""Greedy decoding over an encoder graph and a KV-cache decoder graph (translation models).

The same code runs the export's parity check (against `transformers.generate`) and the runtime's
Triton model, so the loop that was verified is the one that is served.

The graphs (nimbuild.export.translation):
- encoder: `input_ids [B, S]`, `attention_mask [B, S]` -> `cross.<layer>.key|value [B, heads, S, dim]`,
  the cross-attention keys and values of every decoder layer, projected once per source rather
  than at every step;
- decoder: `input_ids [B, T]`, `encoder_attention_mask [B, S]`, `past_key_values.<layer>.key|value
  [B, heads, P, dim]` (self-attention) and the cross keys and values -> the last position's
  `logits [B, 1, vocab]` and `present.<layer>.key|value` (P + T long).

A batch's rows all start from the decoder start token and take one token per step, so they share
positions and no decoder-side padding exists; sources are right-padded and masked. A row that has
finished (end-of-sequence, or its token budget) leaves the batch: its rows of every cache are
dropped, so the rest do not compute on its behalf.
"""

from __future__ import annotations

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

    def step(self, tokens: np.ndarray, mask: np.ndarray, past: list[np.ndarray],
             cross: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """The next-token logits [B, vocab] (fp32) and the grown self-attention cache."""
        feeds = {"input_ids": tokens, "encoder_attention_mask": mask, **dict(zip(self.cache.past_names, past)),
                 **dict(zip(self.cross_names, cross))}
        logits, *present = self.decoder.run(self.output_names, feeds)
        return np.asarray(logits, dtype=np.float32)[:, -1, :], present


def greedy_settings(runtime: dict) -> dict:
    """greedy()'s special tokens from the export's `runtime` record (model_info.json): the parity
    check and the served model both read them from there, so the build checks what is served."""
    return dict(start=int(runtime["decoder_start_token_id"]), eos=int(runtime["eos_token_id"]),
                pad=int(runtime["pad_token_id"]), banned=tuple(runtime["banned_token_ids"]))


def padded(rows: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded source ids and their mask, as Marian's tokenizer pads."""
    longest = max(len(r) for r in rows)
    ids = np.full((len(rows), longest), pad, np.int64)
    mask = np.zeros((len(rows), longest), np.int64)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask


def greedy(graphs: TranslationGraphs, rows: list[list[int]], budgets: list[int], *, start: int, eos: int,
           pad: int, banned: tuple[int, ...] = (),
           on_logits: Callable[[int, np.ndarray], None] | None = None) -> list[list[int]]:
    """Each source row's greedy output tokens (the end-of-sequence token kept when reached, as
    `transformers.generate` keeps it), at most `budgets[i]` tokens. `banned` tokens are never
    chosen (Marian's pad, which its generation config forbids). `on_logits(row, logits)` sees every
    step's raw logits, for parity checks."""
    ids, mask = padded(rows, pad)
    cross = graphs.encode(ids, mask)
    outputs: list[list[int]] = [[] for _ in rows]
    alive = np.array([i for i, b in enumerate(budgets) if b > 0], np.int64)
    if len(alive) < len(rows):
        cross, mask = [c[alive] for c in cross], mask[alive]
    past = graphs.cache.empty(len(alive))
    tokens = np.full((len(alive), 1), start, np.int64)
    banned_ids = np.asarray(banned, np.int64)
    while len(alive):
        logits, past = graphs.step(tokens, mask, past, cross)
        if on_logits:
            for k, row in enumerate(alive):
                on_logits(int(row), logits[k])
        if len(banned_ids):
            logits[:, banned_ids] = -np.inf
        chosen = np.argmax(logits, axis=1)
        keep = []
        for k, row in enumerate(alive):
            outputs[row].append(int(chosen[k]))
            if chosen[k] != eos and len(outputs[row]) < budgets[row]:
                keep.append(k)
        if len(keep) < len(alive):  # finished rows leave every cache
            index = np.asarray(keep, np.int64)
            alive, chosen, mask = alive[index], chosen[index], mask[index]
            past, cross = [p[index] for p in past], [c[index] for c in cross]
        tokens = chosen.reshape(-1, 1).astype(np.int64)
    return outputs
