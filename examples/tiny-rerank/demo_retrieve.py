"""The retrieval end of `make demo`, as a NeMo Retriever pipeline composes it: embed passages with
the embedding NIM, retrieve the nearest to a query, rerank them with the reranking NIM. Two
runtime_min instances (minilm-embed's profile and tiny-rerank's), this application passing the
data between them over their HTTP APIs (`/v1/embeddings`, `/v1/ranking`).

What a machine can check is checked: the retrieval finds the passage that states the answer
(all-MiniLM-L6-v2 is the real pretrained model), and the reranker's answer is a permutation of
the retrieved passages in descending logits. tiny-rerank's weights are random (no real
cross-encoder can be had offline), so its order carries no meaning; the path does.

    python examples/tiny-rerank/demo_retrieve.py EMBED_MANIFEST RERANK_MANIFEST   (ports: NIM_HTTP_API_PORT and the next)
"""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "minilm-embed"))  # demo_embed.running, shared by the demos
from demo_embed import running  # noqa: E402

PASSAGES = [
    "To reset your password, open Settings, choose Security and press Reset password.",
    "Refunds for damaged orders are issued within five days of the return.",
    "The central bank left interest rates unchanged on Thursday.",
    "A dog is running through a field of tall grass.",
    "Your password must have at least twelve characters.",
    "Quantum computers use qubits instead of bits.",
]
QUERY = "How do I reset my password?"
ANSWER = 0  # the passage that states it
TOP = 3


def retrieve_and_rerank(embed_at: str, rerank_at: str) -> tuple[list[int], list[dict]]:
    """The nearest TOP passages by cosine, and the reranker's rankings of them (indexes into PASSAGES)."""
    vectors = httpx.post(f"{embed_at}/v1/embeddings", json={"model": "minilm-embed", "input": [QUERY] + PASSAGES},
                         timeout=60).raise_for_status().json()["data"]
    matrix = np.array([v["embedding"] for v in sorted(vectors, key=lambda v: v["index"])])
    scores = matrix[1:] @ matrix[0]  # normalised vectors: cosine similarity
    nearest = [int(i) for i in np.argsort(-scores)[:TOP]]
    reply = httpx.post(f"{rerank_at}/v1/ranking", json={"model": "tiny-rerank", "query": {"text": QUERY},
                                                        "passages": [{"text": PASSAGES[i]} for i in nearest]},
                       timeout=60).raise_for_status().json()
    return nearest, [{"passage": nearest[r["index"]], "logit": r["logit"]} for r in reply["rankings"]]


def main(embed_manifest: str, rerank_manifest: str) -> int:
    port = int(os.environ.get("NIM_HTTP_API_PORT") or 8000)
    with ExitStack() as stack:
        embed_at = stack.enter_context(running(embed_manifest, port))
        rerank_at = stack.enter_context(running(rerank_manifest, port + 1))
        if embed_at is None or rerank_at is None:
            return 1
        nearest, reranked = retrieve_and_rerank(embed_at, rerank_at)
    print(f"query: {QUERY}")
    print("retrieved (minilm-embed, cosine):", *(f"  [{i}] {PASSAGES[i]}" for i in nearest), sep="\n")
    print("reranked (tiny-rerank, random weights):", *(f"  {r['logit']:+.4f} [{r['passage']}] {PASSAGES[r['passage']]}"
                                                      for r in reranked), sep="\n")
    logits = [r["logit"] for r in reranked]
    if ANSWER not in nearest:
        print(f"FAILED: the passage that answers the query ([{ANSWER}]) was not retrieved", file=sys.stderr)
        return 1
    if sorted(r["passage"] for r in reranked) != sorted(nearest) or logits != sorted(logits, reverse=True):
        print("FAILED: the reranking is not the retrieved passages in descending logits", file=sys.stderr)
        return 1
    print("retrieval and reranking: ok")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
