"""Buffered streaming for full-context encoders (CTC and transducers), as NeMo's buffered (chunked)
inference does: a chunk's work does not grow with the stream.

The stream is cut into chunks of `chunk` samples. Chunk k is committed once `right` samples after
it have arrived (right context, so its last frames see some future): the encoder runs on a window
of at most `left` samples before it, the chunk, and the right context, and only the encoder frames
of chunk k are kept. Everything is bounded: audio older than the left context is dropped, and each
window is at most left + chunk + right long. A partial transcript adds the right context's frames
tentatively, so partials still cover all audio heard; at the end of the stream, whatever is left is
committed with its left context, and the final transcript comes at once (the right context delays
only when a partial's words become final, not the final transcript).

Window starts and chunk sizes are whole encoder frames (feature hop x subsampling), so committed
frames line up with the stream's own frame grid. The window's features are normalised over the
window, and its first frames lack what came before: these are the approximations of buffered
inference, and why a stream's final transcript can differ from the offline one (measured in the
tests and README).

The committed frames are a CTC model's log-probs, kept for the stream's life (decoding them again is
an argmax), or a transducer encoder's outputs, which the search takes once (`take_committed`) and
then forgets: the stream carries the search's state (`search`, `searched`) instead.
"""

from __future__ import annotations

import numpy as np


class BufferedStream:
    def __init__(self, unit: int, chunk: int, left: int, right: int, search=None):
        self.unit = unit  # samples per encoder frame
        self.chunk = max(unit, chunk // unit * unit)
        self.left = left // unit * unit
        self.right = right // unit * unit
        self.audio = np.zeros(0, dtype=np.float32)
        self.offset = 0  # the stream's sample index of audio[0]
        self.committed = 0  # samples whose encoder frames are final
        self.frames: list[np.ndarray] = []  # committed acoustic frames, in stream order
        self.received = 0
        self.search = search  # a transducer's hypothesis over the frames searched so far
        self.searched = 0  # encoder frames the search has taken

    def push(self, samples: np.ndarray) -> None:
        self.audio = np.concatenate([self.audio, samples.astype(np.float32)])
        self.received += len(samples)

    def ready(self) -> bool:
        """A chunk can be committed: it and its right context have arrived."""
        return self.received - self.committed >= self.chunk + self.right

    def window(self, final: bool) -> tuple[np.ndarray, int, int | None]:
        """(audio, first frame to keep, frame after the last to keep or None for all) of the next step."""
        start = max(0, self.committed - self.left)
        end = self.received if final else self.committed + self.chunk + self.right
        keep_from = (self.committed - start) // self.unit
        keep_to = None if final else keep_from + self.chunk // self.unit
        return self.audio[start - self.offset:end - self.offset], keep_from, keep_to

    def commit(self, acoustic: np.ndarray, keep_from: int, keep_to: int | None, final: bool) -> np.ndarray:
        """Keep the step's frames; return the tentative ones after them (the right context's)."""
        kept = acoustic[keep_from:keep_to]
        self.frames.append(kept)
        self.committed = self.received if final else self.committed + self.chunk
        drop = max(0, self.committed - self.left) - self.offset  # older than any later window needs
        if drop > 0:
            self.audio, self.offset = self.audio[drop:], self.offset + drop
        return acoustic[keep_to:] if keep_to is not None else acoustic[:0]

    def acoustic(self, tentative: np.ndarray | None = None) -> np.ndarray:
        """Every committed frame, then the tentative ones."""
        parts = self.frames + ([tentative] if tentative is not None and len(tentative) else [])
        return np.concatenate(parts) if parts else np.zeros((0, 1), dtype=np.float32)

    def take_committed(self) -> np.ndarray:
        """The committed frames not taken yet, forgotten here once taken."""
        taken, self.frames = self.acoustic(), []
        return taken
