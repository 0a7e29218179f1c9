"""Text generation on the tiny-llama example: prefill and decode tokens/s and time to first token
through runtime_min (HTTP -> Triton -> batched onnxruntime generator), against transformers'
`generate` in-process on the same checkpoint and thread count, at concurrency 1 and 8.

Concurrency 8 in-process is one `generate` call over 8 left-padded prompts (transformers' own
batching); through the runtime it is 8 clients streaming at once (continuous batching).
Prefill tokens/s = prompt tokens / time to first token; decode tokens/s = generated tokens after
the first / the time they took, summed over concurrent streams.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import statistics
import tempfile
import sys
import time
from pathlib import Path

import httpx

from common import table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # demo_embed.running

REPO = Path(__file__).resolve().parents[1]
THREADS = 2
PROMPT = "A man is playing a guitar in the park while the rain falls softly on the leaves and the people " * 3
NEW_TOKENS = 64
ROUNDS = 3


def _stream(url: str) -> tuple[float, float, int, int]:
    """(time to first token, total time, prompt tokens, generated tokens) of one streamed completion."""
    body = {"model": "tiny-llama", "prompt": PROMPT, "max_tokens": NEW_TOKENS, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, usage = None, {}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as reply:
        for line in reply.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                first = first or time.perf_counter()
                usage = chunk.get("usage") or usage
    return first - start, time.perf_counter() - start, usage["prompt_tokens"], usage["completion_tokens"]


def _runtime_rows(url: str, concurrency: int) -> dict:
    ttft, prefill, decode = [], [], []
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for _ in range(ROUNDS):
            start = time.perf_counter()
            results = list(pool.map(lambda _: _stream(url), range(concurrency)))
            wall = time.perf_counter() - start
            ttft += [r[0] for r in results]
            prefill.append(sum(r[2] for r in results) / max(r[0] for r in results))
            decode.append(sum(r[3] - 1 for r in results) / (wall - max(r[0] for r in results)))
    return {"ttft": statistics.median(ttft), "prefill": statistics.median(prefill), "decode": statistics.median(decode)}


def _transformers_rows(concurrency: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(THREADS)
    tokenizer = AutoTokenizer.from_pretrained(REPO / "recipes" / "models" / "tiny-llama", padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(REPO / "recipes" / "models" / "tiny-llama").eval()
    batch = tokenizer([PROMPT] * concurrency, return_tensors="pt", padding=True)

    def generate(n: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(**batch, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return time.perf_counter() - start

    generate(4)
    ttft = statistics.median(generate(1) for _ in range(ROUNDS))
    whole = statistics.median(generate(NEW_TOKENS) for _ in range(ROUNDS))
    prompt_tokens = int(batch["attention_mask"].sum())
    return {"ttft": ttft, "prefill": prompt_tokens / ttft, "decode": concurrency * (NEW_TOKENS - 1) / (whole - ttft)}


def main() -> str:
    from demo_embed import running  # scripts/: start, wait for ready, SIGTERM at the end
    from nimbuild.cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        try:
            cli(["-q", "compile", str(REPO / "recipes" / "tiny-llama.yaml"), "--out", str(out)], standalone_mode=False)
        except SystemExit:
            pass
        os.environ.update(NIM_CACHE_PATH=str(Path(tmp) / "cache"), NIMBUILD_ORT_THREADS=str(THREADS))
        rows = []
        with running(str(out / "profiles.yaml"), _free_port()) as url:
            for concurrency in (1, 8):
                _runtime_rows(url, concurrency)  # warm-up
                served = _runtime_rows(url, concurrency)
                local = _transformers_rows(concurrency)
                for name, r in (("runtime_min (Triton, onnxruntime)", served), ("transformers generate, in-process", local)):
                    rows.append([name, str(concurrency), f"{r['ttft'] * 1e3:.1f}", f"{r['prefill']:.0f}", f"{r['decode']:.0f}"])
                rows.append(["  ratio runtime / transformers", str(concurrency), f"{served['ttft'] / local['ttft']:.2f}x",
                             f"{served['prefill'] / local['prefill']:.2f}x", f"{served['decode'] / local['decode']:.2f}x"])
    return table("tiny-llama generation (tokens/s summed over concurrent streams)", ["path", "concurrency", "TTFT ms", "prefill tok/s", "decode tok/s"], rows) + \
        f"\n(prompt {len(PROMPT.split())} words, {NEW_TOKENS} new tokens, {THREADS} threads each side, median of {ROUNDS})"


def _free_port() -> int:
    from servers import free_port

    return free_port()


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    print(main())
