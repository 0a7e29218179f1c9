"""Batched greedy decoding for transducers (RNNT and TDT) over NeMo's exported decoder-joint graph.

NeMo exports a transducer as two graphs: the encoder, and `decoder_joint`, which runs the
prediction network one step (last label, LSTM states) and the joint over one encoder frame:

    encoder_outputs [B, D, 1], targets [B, 1], target_length [B], input_states_1/2 [L, B, H]
        -> outputs [B, 1, 1, V+1(+durations)], prednet_lengths, output_states_1/2

The search is NeMo's greedy label looping (GreedyBatchedRNNTInfer / GreedyBatchedTDTInfer), row by
row the same rules, so the tokens equal NeMo's own `transcribe()` (checked at build time):
- a row starts from the blank label (NeMo's start-of-sequence) with zero states;
- blank: advance one frame (TDT: its predicted duration, at least one);
- a label: emit it at this frame, step the prediction network with it, and advance by its
  duration (RNNT: zero, stay on the frame); after `max_symbols` labels on one frame, advance.
Rows advance independently; each step runs the graph once over the rows still inside their
frames. A `Hypothesis` carries everything between calls, so a stream decodes chunk after chunk
with flat cost and a partial transcript decodes a copy.

Pure numpy over an onnxruntime session (or any object with its `run`): the runtime's Triton
models import this file, and the build checks it against NeMo.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

STATE_INPUTS = ("input_states_1", "input_states_2")
STATE_OUTPUTS = ("output_states_1", "output_states_2")


@dataclass
class Hypothesis:
    """One utterance's search state: labels so far (with the frame each was emitted on, its
    duration in frames and its probability), the prediction network's state, the next frame."""

    label: int  # the last label fed to the prediction network (the blank before any)
    states: list[np.ndarray]  # the prediction network's states for this row, each [L, H]
    frame: int = 0  # the next frame to decode, counted from the start of the stream
    repeats: int = 0  # labels emitted on the frame of the last one
    tokens: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    durations: list[int] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)

    def copy(self) -> "Hypothesis":
        return copy.deepcopy(self)


class TransducerDecoder:
    def __init__(self, session, blank: int, durations: list[int] | None, max_symbols: int | None,
                 state_shapes: list[tuple[int, int]]):
        self.session = session
        self.blank = blank
        self.durations = np.array(durations, dtype=np.int64) if durations else None  # None: RNNT
        self.max_symbols = max_symbols
        self.state_shapes = state_shapes  # (layers, hidden) of each prediction-network state

    def start(self) -> Hypothesis:
        return Hypothesis(label=self.blank, states=[np.zeros(s, dtype=np.float32) for s in self.state_shapes])

    def decode(self, hypotheses: list[Hypothesis], encoded: list[np.ndarray], first_frames: list[int]) -> None:
        """Advance each hypothesis over its encoder frames `encoded[i]` [frames, D], which are the
        stream's frames from `first_frames[i]` on; hypotheses are updated in place."""
        ends = [first + len(frames) for first, frames in zip(first_frames, encoded)]
        while True:
            active = [i for i, h in enumerate(hypotheses) if h.frame < ends[i]]
            if not active:
                return
            frames = np.stack([encoded[i][hypotheses[i].frame - first_frames[i]] for i in active])
            logits, states = self._step([hypotheses[i] for i in active], frames)
            for row, i in enumerate(active):
                self._advance(hypotheses[i], logits[row], [s[:, row] for s in states])

    def _step(self, rows: list[Hypothesis], frames: np.ndarray):
        labels = np.array([[h.label] for h in rows], dtype=np.int32)
        lengths = np.ones(len(rows), dtype=np.int32)
        feeds = {"encoder_outputs": frames[:, :, None].astype(np.float32, copy=False), "targets": labels,
                 "target_length": lengths}
        for k, name in enumerate(STATE_INPUTS):
            feeds[name] = np.stack([h.states[k] for h in rows], axis=1)
        outputs = self.session.run(["outputs", *STATE_OUTPUTS], feeds)
        return outputs[0][:, 0, 0, :], outputs[1:]

    def _advance(self, h: Hypothesis, logits: np.ndarray, states: list[np.ndarray]) -> None:
        vocab = self.blank + 1
        token_logits = logits[:vocab]
        label = int(token_logits.argmax())
        duration = int(self.durations[int(logits[vocab:].argmax())]) if self.durations is not None else 0
        if label == self.blank:
            h.frame += max(duration, 1) if self.durations is not None else 1
            return
        shifted = np.exp(token_logits - token_logits.max())
        h.repeats = h.repeats + 1 if h.frames and h.frames[-1] == h.frame else 1
        h.tokens.append(label)
        h.frames.append(h.frame)
        h.durations.append(max(duration, 1))
        h.probabilities.append(float(1.0 / shifted.sum()))
        h.label, h.states = label, [np.array(s) for s in states]
        h.frame += duration
        if duration == 0 and self.max_symbols is not None and h.repeats >= self.max_symbols:
            h.frame += 1


def token_spans(h: Hypothesis) -> list[tuple[int, int, int, float]]:
    """(token, first frame, frame after it, probability) for each emitted label."""
    return [(t, f, f + d, p) for t, f, d, p in zip(h.tokens, h.frames, h.durations, h.probabilities)]
