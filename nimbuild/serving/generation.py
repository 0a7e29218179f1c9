"""Token generation over a KV-cache decoder graph, with continuous batching.

The same code runs the export's parity check (greedy, against `transformers.generate`) and the
runtime's Triton model, so the generation loop that was verified is the one that is served.

The graph (nimbuild.export.llm) takes `input_ids [B, S]`, `attention_mask [B, past + S]`,
`position_ids [B, S]` and `past_key_values.<layer>.key|value [B, heads, past, head_dim]`, and
returns the last position's `logits [B, 1, vocab]` and `present.<layer>.key|value`. One graph
handles the prefill (past of length 0) and each decode step.

A checkpoint may ask for a sequence's cache to be computed anew once, when it grows past a length
(`recompute_at`: Phi-3's `longrope` switches to its long factors there, and transformers then
re-encodes the whole sequence with them); the sequence is then prefilled again, prompt and
generated tokens together.

Batching: running sequences share one left-padded cache ([B, heads, T, dim], with a [B, T] mask
that is 0 over each row's padding). A decode step feeds that batch as it is and gets back the same
layout one column longer, so nothing is copied while the batch is unchanged. Newcomers are
prefilled together (their prompts left-padded) and joined by padding whichever side is shorter;
a finished sequence's row is dropped and all-padding columns trimmed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

FINISH_STOP, FINISH_LENGTH = "stop", "length"
FINISH_ERROR = "error"  # this sequence alone failed (its grammar could not be followed); Event.error says why


@dataclass
class SamplingParams:
    """What a request asks of the sampler. The processors apply in transformers' order (logit bias,
    repetition penalty, OpenAI's presence and frequency penalties, the minimum length, then the
    temperature and the top-k, top-p and min-p cuts), so `transformers.generate` with the same
    settings makes the same choices (tests/tasks/test_llm.py)."""

    max_tokens: int
    temperature: float = 0.0  # 0: greedy (the processors before the temperature still apply)
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # go on through end-of-sequence tokens, to max_tokens
    top_k: int = 0  # 0: no cut
    min_p: float = 0.0  # drop tokens less likely than min_p x the likeliest
    repetition_penalty: float = 1.0  # transformers' and vLLM's: over prompt and output tokens
    presence_penalty: float = 0.0  # OpenAI's: over the tokens generated so far
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit
    min_tokens: int = 0  # end-of-sequence and stop_token_ids are masked until this many tokens
    stop_token_ids: tuple[int, ...] = ()  # end the output like end-of-sequence (kept out of the text)
    logprobs: int | None = None  # None: none; N: the chosen token's log-probability and the N likeliest
    # llguidance grammar text the output must match (nimbuild.serving.constrained): structured
    # output and required tool calls; its mask applies after the processors, before the temperature
    grammar: str | None = None
    adapter: str | None = None  # a LoRA adapter's name (nimbuild.serving.lora); None: the base model

    @property
    def processes(self) -> bool:
        """Whether any processor before the temperature changes the logits."""
        return bool(self.repetition_penalty != 1.0 or self.presence_penalty or self.frequency_penalty
                    or self.logit_bias or self.min_tokens)


def processed(logits: np.ndarray, params: SamplingParams, prompt: list[int], tokens: list[int],
              ends: Iterable[int]) -> np.ndarray:
    """The logits after the processors that come before sampling (a copy; `logits` when none
    applies). `ends` are the ids min_tokens holds back (end-of-sequence and stop_token_ids)."""
    if not params.processes:
        return logits
    out = logits.astype(np.float32, copy=True)
    if params.logit_bias:
        ids = np.fromiter(params.logit_bias, np.int64)
        out[ids] += np.fromiter(params.logit_bias.values(), np.float32)
    if params.repetition_penalty != 1.0:
        seen = np.unique(np.asarray(prompt + tokens, np.int64))
        scores = out[seen]
        out[seen] = np.where(scores > 0, scores / params.repetition_penalty, scores * params.repetition_penalty)
    if tokens and (params.presence_penalty or params.frequency_penalty):
        ids, counts = np.unique(np.asarray(tokens, np.int64), return_counts=True)
        out[ids] -= counts * params.frequency_penalty + params.presence_penalty
    if len(tokens) < params.min_tokens:
        held = [i for i in ends if 0 <= i < len(out)]
        out[held] = -np.inf
    return out


def distribution(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The sampling probabilities over processed logits at a temperature above 0: scaled, then cut
    to the top k, the top-p nucleus and above min_p of the likeliest, renormalised."""
    scaled = (logits.astype(np.float64) - logits.max()) / params.temperature
    if 0 < params.top_k < len(scaled):
        kth = np.partition(scaled, -params.top_k)[-params.top_k]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled)
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, params.top_p)) + 1]  # the smallest set reaching top_p
        nucleus = np.zeros_like(probs)
        nucleus[keep] = probs[keep]
        probs = nucleus / nucleus.sum()
    if params.min_p > 0:
        probs = np.where(probs < params.min_p * probs.max(), 0.0, probs)
        probs /= probs.sum()
    return probs


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


class CacheLayout:
    """A KV-cache decoder graph's self-attention cache as its own inputs declare it: the flat
    `past_key_values.<layer>.key|value` names in layer order, the `present.*` outputs that answer
    them, and the heads, head size and dtype of an empty cache. Decoder-only (generation) and
    encoder-decoder (seq2seq) graphs share it."""

    def __init__(self, inputs):
        by_name = {i.name: i for i in inputs}
        self.past_names = sorted((n for n in by_name if n.startswith("past_key_values.")), key=layer_order)
        self.present_names = ["present." + n[len("past_key_values."):] for n in self.past_names]
        first = by_name[self.past_names[0]]
        self.heads, self.head_dim = int(first.shape[1]), int(first.shape[3])
        self.dtype = np.float16 if "float16" in first.type else np.float32

    def empty(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, self.heads, 0, self.head_dim), self.dtype) for _ in self.past_names]


class DecoderGraph:
    """An onnxruntime session over a KV-cache decoder graph, with the graph's layout read from it."""

    def __init__(self, session):
        self.session = session
        self.cache = CacheLayout(session.get_inputs())
        self.past_names = self.cache.past_names
        self.output_names = ["logits", *self.cache.present_names]

    def empty_cache(self, batch: int) -> list[np.ndarray]:
        return self.cache.empty(batch)

    def run(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray,
            cache: list[np.ndarray], extra: dict | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """Returns the last position's logits [B, vocab] (fp32) and the new cache. `extra`: further
        inputs (a LoRA graph's adapters and slots)."""
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **dict(zip(self.past_names, cache)),
                 **(extra or {})}
        logits, *present = self.session.run(self.output_names, feeds)
        return logits[:, -1, :].astype(np.float32, copy=False), present


def cache_names(prefix: str, layers: int) -> list[str]:
    """`<prefix>.<layer>.key|value` for every layer, in the order layer_order sorts them: the flat
    names the exported graphs give their caches (past_key_values, present, cross)."""
    return [f"{prefix}.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


def layer_order(name: str) -> tuple[int, int]:
    """`<prefix>.<layer>.key|value` in layer order, key before value (the cache's flat layout)."""
    _, layer, kind = name.split(".")
    return int(layer), 0 if kind == "key" else 1


def prefill_inputs(prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-padded ids, the mask, and position ids that count only real tokens (padding gets 0)."""
    longest = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), longest), np.int64)
    mask = np.zeros((len(prompts), longest), np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt):] = prompt
        mask[row, longest - len(prompt):] = 1
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    return ids, mask, positions


def greedy(graph: DecoderGraph, prompt: list[int], max_new_tokens: int, eos_ids: Iterable[int] = (),
           on_logits: Callable[[np.ndarray], None] | None = None, recompute_at: int | None = None,
           forced: list[int] | None = None) -> list[int]:
    """Greedy tokens for one prompt, stopping after an end-of-sequence token (which is kept, as
    `transformers.generate` keeps it). `on_logits` sees each step's logits, for parity checks;
    `forced` feeds those tokens instead of the greedy ones (teacher forcing: a perplexity)."""
    eos = set(eos_ids)
    ids, mask, positions = prefill_inputs([prompt])
    cache = graph.empty_cache(1)
    tokens: list[int] = []
    for _ in range(max_new_tokens):
        logits, cache = graph.run(ids, mask, positions, cache)
        if on_logits:
            on_logits(logits[0])
        token = forced[len(tokens)] if forced else int(np.argmax(logits[0]))
        tokens.append(token)
        if token in eos:
            break
        if recomputes(recompute_at, len(prompt) + len(tokens)):
            ids, mask, positions = prefill_inputs([prompt + tokens])
            cache = graph.empty_cache(1)
            continue
        ids = np.array([[token]], np.int64)
        positions = positions[:, -1:] + 1
        mask = np.concatenate([mask, np.ones((1, 1), np.int64)], axis=1)
    return tokens


def recomputes(recompute_at: int | None, length: int) -> bool:
    """Whether a sequence of `length` tokens, its last not yet fed to the graph, is prefilled anew:
    the token about to be fed is the first past `recompute_at` (as transformers decides for Phi-3)."""
    return recompute_at is not None and length == recompute_at + 1


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """Greedy at temperature 0; otherwise a draw from `distribution` (logits already processed)."""
    if params.temperature <= 0:
        return int(np.argmax(logits))
    probs = distribution(logits, params)
    return int(rng.choice(len(probs), p=probs))


class TextStream:
    """Incremental detokenisation with stop sequences.

    Each new token's text is the growth of the decoded whole (so multi-token characters and
    tokenizers that merge spaces come out right). Text from the first U+FFFD on (a character whose
    bytes have not all arrived, or never will) and any tail that could still become a stop sequence
    are held back until they resolve or the output ends, so the pieces always add up to exactly
    the decoded whole."""

    def __init__(self, decode: Callable[[list[int]], str], stop: tuple[str, ...]):
        self.decode, self.stop = decode, tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.emitted = 0  # characters of the decoded text already handed out

    def push(self, token: int) -> tuple[str, bool]:
        """The text that is now certain, and whether a stop sequence ended the output."""
        self.ids.append(token)
        text = self.decode(self.ids)
        hits = [h for h in (text.find(s, self.emitted) for s in self.stop) if h >= 0]
        if hits:
            end = min(hits)
            delta, self.emitted = text[self.emitted:end], max(self.emitted, end)
            return delta, True
        safe = text.find("\ufffd", self.emitted)
        safe = len(text) if safe < 0 else safe
        for s in self.stop:  # hold back a tail that is the start of a stop sequence
            for k in range(min(len(s) - 1, safe - self.emitted), 0, -1):
                if text[safe - k:safe] == s[:k]:
                    safe -= k
                    break
        delta = text[self.emitted:safe]
        self.emitted = max(self.emitted, safe)
        return delta, False

    def flush(self) -> str:
        """What was held back, once the output ends for another reason."""
        text = self.decode(self.ids)
        delta = text[self.emitted:]
        self.emitted = len(text)
        return delta


@dataclass
class Sequence:
    prompt: list[int]
    params: SamplingParams
    context: Any = None  # the caller's handle (a Triton response sender, a test's list)
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    text: TextStream | None = None
    rng: np.random.Generator | None = None
    constraint: Any = None  # a nimbuild.serving.constrained.Constraint when params.grammar is set
    slot: int = 0  # the LoRA slot its rows read (0: the base model)


@dataclass
class Event:
    sequence: Sequence
    token: int
    text: str
    finish_reason: str | None  # set on a sequence's last event
    # with params.logprobs: the token's log-probability under the model (its raw logits, as OpenAI
    # and vLLM report), and the likeliest alternatives as (token, log-probability), likeliest first
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)
    error: str | None = None  # with FINISH_ERROR


class Generator:
    """Continuous batching over one DecoderGraph: `add` queues, `step` advances every running
    sequence by one token (prefilling newcomers first) and returns what each produced."""

    def __init__(self, graph: DecoderGraph, max_batch: int, max_context: int, eos_ids: Iterable[int] = (),
                 decode: Callable[[list[int]], str] | None = None, recompute_at: int | None = None,
                 constrain: Callable[[str], Any] | None = None, adapters: Any = None):
        self.graph, self.max_batch, self.max_context = graph, max_batch, max_context
        self.constrain = constrain  # grammar text -> a Constraint (the model's Masks.constraint)
        self.adapters = adapters  # a nimbuild.serving.lora.AdapterBank for a LoRA graph
        self.recompute_at = recompute_at
        self.eos = set(eos_ids)
        self.decode = decode or (lambda ids: "")
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self.parked: list[Sequence] = []  # waiting for a LoRA slot to free (their adapter is not loaded)
        self.cache: list[np.ndarray] = []
        self.mask = np.zeros((0, 0), np.int64)
        self.positions = np.zeros((0,), np.int64)
        self.last = np.zeros((0,), np.int64)
        self.batch_sizes: list[int] = []  # rows in each graph call, for metrics; a long-running caller drains it

    def add(self, sequence: Sequence) -> None:
        if not sequence.prompt:
            raise ValueError("a prompt needs at least one token")
        if sequence.params.grammar and sequence.constraint is None:
            if self.constrain is None:
                raise ValueError("this generator takes no grammar")
            sequence.constraint = self.constrain(sequence.params.grammar)
        if sequence.params.adapter and self.adapters is None:
            raise ValueError("this model serves no LoRA adapter")
        queue = self.waiting
        if self.adapters is not None:  # loads the adapter into a slot, or refuses it (AdapterError)
            from nimbuild.serving.lora import SlotsBusy

            try:
                sequence.slot = self.adapters.acquire(sequence.params.adapter)
            except SlotsBusy:  # every slot is read by running sequences: it waits for one to free
                queue = self.parked
        sequence.text = TextStream(self.decode, sequence.params.stop)
        seed = sequence.params.seed
        sequence.rng = np.random.default_rng(seed if seed is not None else np.random.SeedSequence().entropy)
        queue.append(sequence)

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running or self.parked)

    def cancel(self, predicate: Callable[[Sequence], bool]) -> list[Sequence]:
        """Drop sequences (a client went away) without producing anything for them, and return
        them. `predicate` is asked once per sequence: its answer can change between two asks (a
        client hanging up meanwhile), and a sequence dropped but not returned would never get its
        final response, so Triton would hold its request until shutdown and then wait on it."""
        parked = [(s, predicate(s)) for s in self.parked]
        waiting = [(s, predicate(s)) for s in self.waiting]
        running = [(s, predicate(s)) for s in self.running]
        self.parked = [s for s, gone in parked if not gone]
        self.waiting = [s for s, gone in waiting if not gone]
        self._keep([i for i, (_, gone) in enumerate(running) if not gone])
        dropped = [s for s, gone in waiting + running if gone]
        for sequence in dropped:
            self._release(sequence)
        return dropped + [s for s, gone in parked if gone]

    def _release(self, sequence: Sequence) -> None:
        if self.adapters is not None:
            self.adapters.release(sequence.slot)

    def _lora(self, sequences: list[Sequence]) -> dict | None:
        return self.adapters.feeds(np.array([s.slot for s in sequences])) if self.adapters is not None else None

    def step(self) -> list[Event]:
        events: list[Event] = []
        if self.parked:
            events += self._unpark()
        if self.recompute_at is not None:
            self._requeue_crossing()
        if self.running:
            events += self._decode()
        room = self.max_batch - len(self.running)
        if self.waiting and room > 0:
            newcomers, self.waiting = self.waiting[:room], self.waiting[room:]
            events += self._prefill(newcomers)
        return events

    def _unpark(self) -> list[Event]:
        """Sequences waiting for a LoRA slot take the ones running sequences released, in arrival
        order; one whose adapter can no longer be loaded (its files changed meanwhile) fails alone."""
        from nimbuild.serving.lora import SlotsBusy

        failed = []
        while self.parked:
            sequence = self.parked[0]
            try:
                sequence.slot = self.adapters.acquire(sequence.params.adapter)
            except SlotsBusy:
                break
            except ValueError as e:
                sequence.finish_reason = FINISH_ERROR
                failed.append(Event(sequence, -1, "", FINISH_ERROR, error=str(e)))
            else:
                self.waiting.append(sequence)
            self.parked.pop(0)
        return failed

    def _requeue_crossing(self) -> None:
        """Running sequences whose cache is to be computed anew go back to the front of the queue;
        their prefill takes their generated tokens too."""
        crossing = [i for i, s in enumerate(self.running) if recomputes(self.recompute_at, len(s.prompt) + len(s.tokens))]
        if crossing:
            self.waiting = [self.running[i] for i in crossing] + self.waiting
            self._keep([i for i in range(len(self.running)) if i not in crossing])

    def _prefill(self, newcomers: list[Sequence]) -> list[Event]:
        ids, mask, positions = prefill_inputs([s.prompt + s.tokens for s in newcomers])
        logits, cache = self.graph.run(ids, mask, positions, self.graph.empty_cache(len(newcomers)), self._lora(newcomers))
        self.batch_sizes.append(len(newcomers))
        self._join(newcomers, cache, mask, positions[:, -1] + 1)
        return self._advance(logits, range(len(self.running) - len(newcomers), len(self.running)))

    def _decode(self) -> list[Event]:
        rows = len(self.running)
        mask = np.concatenate([self.mask, np.ones((rows, 1), np.int64)], axis=1)
        logits, self.cache = self.graph.run(self.last[:, None], mask, self.positions[:, None], self.cache,
                                            self._lora(self.running))
        self.batch_sizes.append(rows)
        self.mask, self.positions = mask, self.positions + 1
        return self._advance(logits, range(rows))

    def _advance(self, logits: np.ndarray, rows: Iterable[int]) -> list[Event]:
        """Sample each row's next token, emit its text, and retire the rows that finished."""
        events, finished = [], set()
        for row, logit_row in zip(rows, logits):
            seq = self.running[row]
            params = seq.params
            ends = self.eos.union(params.stop_token_ids)
            scores = processed(logit_row, params, seq.prompt, seq.tokens, ends)
            try:
                if seq.constraint is not None:
                    scores = seq.constraint.mask(scores, fallback=logit_row)
                token = sample(scores, params, seq.rng)
                # a grammar that is complete ends the output (its end-of-sequence, or its last token)
                complete = seq.constraint is not None and seq.constraint.advance(token)
            except ValueError as e:  # a grammar this vocabulary cannot follow: this sequence fails, not the batch
                seq.finish_reason = FINISH_ERROR
                finished.add(row)
                self._release(seq)
                events.append(Event(seq, -1, "", FINISH_ERROR, error=f"the output cannot follow the grammar: {e}"))
                continue
            logprob, top = _logprobs(logit_row, token, params.logprobs)
            seq.tokens.append(token)
            self.last[row] = token
            eos = (token in self.eos and (not params.ignore_eos or complete)) or token in params.stop_token_ids
            text, stopped = ("", False) if eos else seq.text.push(token)
            if stopped or eos or complete:
                seq.finish_reason = FINISH_STOP
            elif len(seq.tokens) >= seq.params.max_tokens or len(seq.prompt) + len(seq.tokens) >= self.max_context:
                seq.finish_reason = FINISH_LENGTH
            if seq.finish_reason:
                text += "" if stopped else seq.text.flush()
                finished.add(row)
                self._release(seq)
            events.append(Event(seq, token, text, seq.finish_reason, logprob, top))
        if finished:
            self._keep([i for i in range(len(self.running)) if i not in finished])
        return events

    def _join(self, newcomers: list[Sequence], cache: list[np.ndarray], mask: np.ndarray, positions: np.ndarray) -> None:
        width = max(self.mask.shape[1], mask.shape[1])
        if self.running:
            self.cache = [np.concatenate([_left_pad(a, width, 2), _left_pad(b, width, 2)]) for a, b in zip(self.cache, cache)]
            self.mask = np.concatenate([_left_pad(self.mask, width, 1), _left_pad(mask, width, 1)])
        else:
            self.cache, self.mask = cache, mask
        self.positions = np.concatenate([self.positions, positions])
        self.last = np.concatenate([self.last, np.zeros(len(newcomers), np.int64)])
        self.running = self.running + newcomers

    def _keep(self, rows: list[int]) -> None:
        if len(rows) == len(self.running):
            return
        self.running = [self.running[i] for i in rows]
        if not rows:
            self.cache, self.mask = [], np.zeros((0, 0), np.int64)
            self.positions, self.last = np.zeros((0,), np.int64), np.zeros((0,), np.int64)
            return
        mask = self.mask[rows]
        start = int(np.argmax(mask.any(axis=0)))  # columns that are padding in every remaining row
        self.mask = mask[:, start:]
        self.cache = [c[rows][:, :, start:, :] for c in self.cache]
        self.positions, self.last = self.positions[rows], self.last[rows]


def _logprobs(logits: np.ndarray, token: int, top: int | None) -> tuple[float | None, list[tuple[int, float]]]:
    if top is None:
        return None, []
    scores = log_softmax(logits)
    best = np.argpartition(-scores, top)[:top] if 0 < top < len(scores) else np.arange(len(scores) if top else 0)
    best = best[np.argsort(-scores[best], kind="stable")]
    return float(scores[token]), [(int(i), float(scores[i])) for i in best]


def _left_pad(array: np.ndarray, width: int, axis: int) -> np.ndarray:
    missing = width - array.shape[axis]
    if missing <= 0:
        return array
    pad = [(0, 0)] * array.ndim
    pad[axis] = (missing, 0)
    return np.pad(array, pad)
