"""A plain tritonserver on a repository runtime_min wrote, asked once."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def embed_from_repository(install, repository, log: Path) -> np.ndarray:
    """A plain tritonserver started on `repository` (a path, or an s3:// address) and asked once."""
    from runtime_min.triton import TritonServer

    server = TritonServer(install, repository, log)
    server.start()
    try:
        return embed_through_triton(server.url)
    finally:
        server.stop()


def embed_through_triton(url: str) -> np.ndarray:
    """The MiniLM repository's embedding of one tokenised sentence, asked of Triton with tritonclient."""
    import tritonclient.http as triton_http

    client = triton_http.InferenceServerClient(url)
    assert client.is_model_ready("minilm-embed")
    ids = np.array([[101, 1037, 2158, 2003, 5983, 2833, 1012, 102]], dtype=np.int64)
    inputs = []
    for name, array in (("input_ids", ids), ("attention_mask", np.ones_like(ids)), ("token_type_ids", np.zeros_like(ids))):
        tensor = triton_http.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return client.infer("minilm-embed", inputs).as_numpy("embeddings")
