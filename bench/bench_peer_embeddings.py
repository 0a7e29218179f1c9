"""Embeddings against fastembed, the library a user would pick instead of a server, side by side in
one run: runtime_min serving MiniLM's fp32 profile (one sentence per request from 1 and 32 client
threads) against fastembed in process on the very same model.onnx, one sentence per call and
batches of 32. The same work is checked, not assumed: the graph fastembed loads is the profile's
file (its digest), the thread counts are equal, no check sentence reaches either side's truncation
length (so padding and truncation cannot differ), and both sides' embeddings agree (cosine)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from bench_runtime import SENTENCES, WINDOW_S, _compiled, _drive, _start_runtime, _stop
from common import post_json, run_peer, table

PROFILE = "onnxruntime-fp32-throughput"
CONCURRENCY = (1, 32)


def main() -> tuple[str, dict]:
    from nimbuild.fsutil import sha256_file
    from nimbuild.profiles.manifest import load_manifest
    from servers import free_port

    threads = os.cpu_count() or 1
    os.environ["NIMBUILD_ORT_THREADS"] = str(threads)  # the runtime's ORT session, as fastembed's below
    tmp = Path(tempfile.mkdtemp(prefix="nimbuild-bench-peer-embed-"))
    out = _compiled(tmp)
    workspace = out / "profiles" / PROFILE
    profile = next(p for p in load_manifest(out / "profiles.yaml").profiles if p.description == PROFILE)
    assert "sha256:" + sha256_file(workspace / "model.onnx") == profile.files["model.onnx"].digest, "not the profile's graph"

    port = free_port()
    proc, _ = _start_runtime(out / "profiles.yaml", tmp / "cache", port)
    try:
        served, served_vectors = {}, [_embed(port, s) for s in SENTENCES]
        for concurrency in CONCURRENCY:
            served[concurrency], _ = _drive(lambda text: _embed(port, text), concurrency, WINDOW_S)
    finally:
        _stop(proc)
    peer = run_peer("fastembed_embed.py", workspace, threads, WINDOW_S, *CONCURRENCY, stdin=json.dumps(SENTENCES))
    same = _same_work(workspace, peer, served_vectors, _served_max_tokens(workspace), threads)
    rows = [[c, served[c], peer["per_s"][str(c)], served[c] / peer["per_s"][str(c)]] for c in CONCURRENCY]
    text = "\n\n".join([
        table(f"Embeddings/s, MiniLM fp32, {threads} CPUs, {threads} ORT threads each side: runtime_min over HTTP "
              "(one sentence per request, from N client threads on the same machine) against fastembed "
              "in process (N sentences per call)",
              ["N", "runtime_min /s", "fastembed /s", "runtime_min / fastembed"], rows),
        table("Same work, checked", ["check", "value"], [[k, v] for k, v in same.items()]),
    ])
    return text, {"rows": [dict(zip(["concurrency", "runtime_per_s", "fastembed_per_s", "ratio"], r)) for r in rows],
                  "same_work": same}


def _embed(port: int, text: str) -> list[float]:
    reply = post_json("127.0.0.1", port, "/v1/embeddings", {"model": "minilm-embed", "input": text})
    return reply["data"][0]["embedding"]


def _served_max_tokens(workspace: Path) -> int:
    """The runtime's truncation length: the longest sequence the graph's profile takes, as
    runtime_min.http.ServedModel reads it."""
    from runtime_min.http import ServedModel

    info = json.loads((workspace / "model_info.json").read_text())
    return ServedModel("minilm-embed", "", workspace, info).max_tokens


def _same_work(workspace: Path, peer: dict, served_vectors: list, max_tokens: int, threads: int) -> dict:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(workspace / "tokenizer" / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    longest = max(len(tokenizer.encode(s).ids) for s in SENTENCES)
    assert longest < min(max_tokens, peer["truncation"]), "a check sentence reaches a truncation length"
    assert peer["threads"] == threads and peer["padding"] == "batch-longest"
    a, b = np.array(served_vectors), np.array(peer["embeddings"])
    cosine = float(np.min(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))
    assert cosine > 0.9999, f"the embeddings differ (least cosine {cosine:.6f})"
    return {"graph": "the profile's model.onnx (digest checked)", "threads": threads,
            "longest check sentence (tokens)": longest,
            "truncation (runtime, fastembed)": f"{max_tokens}, {peer['truncation']}",
            "padding": "runtime: its batcher's; fastembed: batch-longest (masked mean pooling both)",
            "least cosine, runtime vs fastembed": f"{cosine:.7f}"}


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    print(main()[0])
