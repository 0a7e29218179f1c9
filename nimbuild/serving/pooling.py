"""sentence-transformers' pooling and normalisation, applied after the graph.

One implementation for both sides of a promise: the precision gate measures what a client
receives, and the Triton model serves it. Numpy only, so the runtime can import it.
"""

from __future__ import annotations

import numpy as np


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str, normalize: bool) -> np.ndarray:
    """[batch, sequence, dim] hidden states and a [batch, sequence] mask -> [batch, dim] vectors,
    computed in `hidden`'s dtype."""
    weights = mask[..., None].astype(hidden.dtype)
    if mode == "cls":
        pooled = hidden[:, 0].copy()
    elif mode == "max":
        pooled = np.where(weights > 0, hidden, -np.inf).max(axis=1)
    elif mode == "last":
        last = weights[..., 0].sum(axis=1).astype(np.int64) - 1
        pooled = hidden[np.arange(hidden.shape[0]), last].copy()
    else:
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    if normalize:
        pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled
