"""Text generation through runtime_min (HTTP -> Triton -> batched onnxruntime generator) against
transformers in-process on the same checkpoint, dtype (fp32), prompt and thread count.

Two models: the tiny-llama example (140k parameters: every figure there is per-token overhead)
and a 76M-parameter Llama (12 layers, hidden 768, GQA 12/4 heads, random weights made here from a
config, the example's tokenizer) where compute matters. The goals are read on the larger one.

Baselines at concurrency 8: 8 single-prompt `generate` calls one after another (what serving
without batching gives: each request's decode runs at the batch-1 rate, so that row is the batch-1
measurement, not a second one) and one `generate` over 8 left-padded prompts (transformers' own static
batching, which the runtime's continuous batching should match). Through the runtime, 8 clients
stream at once. Prefill tokens/s = prompt tokens / time to first token; decode tokens/s =
generated tokens after the first / the time they took, summed over concurrent streams.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import compile_recipe, http_client, table

sys.path[:0] = [str(p) for p in sorted((Path(__file__).resolve().parents[1] / "examples").iterdir())]  # demo_embed.running

REPO = Path(__file__).resolve().parents[1]
THREADS = 2
PROMPT = "A man is playing a guitar in the park while the rain falls softly on the leaves and the people " * 3
NEW_TOKENS = 64
ROUNDS = 3
LARGE = {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 12,
         "num_key_value_heads": 4}


def _stream(url: str, model: str) -> tuple[float, float, int, int, str]:
    """(time to first token, total time, prompt tokens, generated tokens, text) of one streamed completion."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": NEW_TOKENS, "min_tokens": NEW_TOKENS, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    start = time.perf_counter()
    first, usage, text = None, {}, []
    with http_client().stream("POST", f"{url}/v1/completions", json=body) as reply:
        for line in reply.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                first = first or time.perf_counter()
                usage = chunk.get("usage") or usage
                text += [c.get("text") or "" for c in chunk.get("choices") or []]
    return first - start, time.perf_counter() - start, usage["prompt_tokens"], usage["completion_tokens"], "".join(text)


def _served(url: str, model: str, concurrency: int) -> dict:
    ttft, prefill, decode, generated, texts = [], [], [], [], set()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for _ in range(ROUNDS):
            start = time.perf_counter()
            results = list(pool.map(lambda _: _stream(url, model), range(concurrency)))
            wall = time.perf_counter() - start
            ttft += [r[0] for r in results]
            generated += [r[3] for r in results]
            texts |= {r[4] for r in results}
            prefill.append(sum(r[2] for r in results) / max(r[0] for r in results))
            decode.append(sum(r[3] - 1 for r in results) / (wall - max(r[0] for r in results)))
    return {"ttft": statistics.median(ttft), "prefill": statistics.median(prefill), "decode": statistics.median(decode),
            "tokens": min(generated), "prompt_tokens": results[0][2],
            "text": texts.pop() if len(texts) == 1 else None}  # None: clients got different texts


class _Transformers:
    """The same checkpoint in-process: greedy `generate`, a fixed number of new tokens."""

    def __init__(self, path: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(THREADS)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
        self.generate(1, 4)  # warm-up

    def generate(self, batch: int, new: int) -> float:
        inputs = self.tokenizer([PROMPT] * batch, return_tensors="pt", padding=True)
        start = time.perf_counter()
        with self.torch.inference_mode():
            self.model.generate(**inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        return time.perf_counter() - start

    def prompt_tokens(self) -> int:
        return len(self.tokenizer(PROMPT)["input_ids"])

    def rows(self, batch: int) -> dict:
        ttft = statistics.median(self.generate(batch, 1) for _ in range(ROUNDS))
        whole = statistics.median(self.generate(batch, NEW_TOKENS) for _ in range(ROUNDS))
        return {"ttft": ttft, "prefill": batch * self.prompt_tokens() / ttft,
                "decode": batch * (NEW_TOKENS - 1) / (whole - ttft)}


def _make_large(dest: Path) -> None:
    """A 76M-parameter Llama with random weights (seeded) and tiny-llama's tokenizer, saved by transformers."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(REPO / "examples" / "tiny-llama" / "model")
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=1024, initializer_range=0.05,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=eos,
                         tie_word_embeddings=False, **LARGE)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=eos)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _compile(recipe_text: str, work: Path) -> Path:
    recipe = work / "recipe.yaml"
    recipe.write_text(recipe_text)
    compile_recipe(recipe, work / "out")
    return work / "out" / "profiles.yaml"


def _recipe(name: str, source: Path) -> str:
    """tiny-llama's recipe with another source and only the generic fp32 profile."""
    lines = (REPO / "examples" / "tiny-llama" / "recipe.yaml").read_text().splitlines()
    kept = [ln for ln in lines if "tensorrt_llm" not in ln and "built on GPU hosts" not in ln]
    text = "\n".join(kept).replace("name: tiny-llama", f"name: {name}").replace("hf: model\n", f"hf: {source}\n")
    return text + "\n"


def _bench(name: str, source: Path, work: Path) -> tuple[list, dict]:
    from demo_embed import running  # scripts/: start, wait for ready, SIGTERM at the end

    manifest = _compile(_recipe(name, source), work)
    rows, data = [], {}
    with running(str(manifest), _free_port()) as url:
        if url is None:
            raise RuntimeError(f"runtime_min did not start on {name}")
        _served(url, name, 1)  # warm-up
        served = {c: _served(url, name, c) for c in (1, 8)}
    reference = _Transformers(source)
    local = {1: reference.rows(1), 8: reference.rows(8)}
    sequential = local[1]  # requests one after another decode at the batch-1 rate
    for c in (1, 8):
        assert served[c]["tokens"] == NEW_TOKENS, f"the runtime stopped early ({served[c]['tokens']} tokens)"
        rows.append([f"{name}: runtime_min", c, served[c]["ttft"] * 1e3, served[c]["prefill"], served[c]["decode"]])
        rows.append([f"{name}: transformers generate (batch {c})", c, local[c]["ttft"] * 1e3, local[c]["prefill"],
                     local[c]["decode"]])
        if c == 8:
            rows.append([f"{name}: transformers, 8 requests one after another", 8, sequential["ttft"] * 1e3,
                         sequential["prefill"], sequential["decode"]])
    data = {
        "served": served, "transformers": local, "transformers_sequential": sequential,
        "decode_c1_over_transformers": served[1]["decode"] / local[1]["decode"],
        "decode_c8_over_sequential": served[8]["decode"] / sequential["decode"],
        "decode_c8_over_batched": served[8]["decode"] / local[8]["decode"],
        "ttft_c1_ms": served[1]["ttft"] * 1e3,
        "ttft_c1_goal_ms": (1.5 * local[1]["ttft"] + 0.010) * 1e3,
    }
    return rows, data


def for_each_model(bench) -> dict:
    """`bench(name, checkpoint, work folder)` on tiny-llama and on the 76M Llama made here, with
    the runtime's threads and a fresh profile cache; its answers by model name."""
    os.environ["NIMBUILD_ORT_THREADS"] = str(THREADS)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["NIM_CACHE_PATH"] = str(tmp / "cache")
        large = tmp / "llama-76m-model"
        _make_large(large)
        for name, source in (("tiny-llama", REPO / "examples" / "tiny-llama" / "model"), ("llama-76m", large)):
            (tmp / name).mkdir()
            results[name] = bench(name, source, tmp / name)
    return results


def main() -> tuple[str, dict]:
    per_model = for_each_model(_bench)
    rows = [row for model_rows, _ in per_model.values() for row in model_rows]
    results = {name: data for name, (_, data) in per_model.items()}
    big = results["llama-76m"]
    goals = [
        ["decode tok/s at c=1, runtime / transformers", big["decode_c1_over_transformers"], ">= 0.8"],
        ["decode tok/s at c=8, runtime / sequential transformers", big["decode_c8_over_sequential"], ">= 2"],
        ["decode tok/s at c=8, runtime / transformers batch 8", big["decode_c8_over_batched"], "-"],
        ["TTFT at c=1 (ms), runtime", big["ttft_c1_ms"], f"<= {big['ttft_c1_goal_ms']:.1f} (1.5x + 10 ms)"],
    ]
    text = "\n\n".join([
        table("Generation (tokens/s summed over concurrent streams; fp32, 2 threads each side, median of 3)",
              ["path", "concurrency", "TTFT ms", "prefill tok/s", "decode tok/s"], rows),
        table("llama-76m against the goals", ["ratio", "measured", "goal"], goals),
    ]) + f"\n(prompt {len(PROMPT.split())} words, {NEW_TOKENS} new tokens each, end-of-sequence ignored on both sides)"
    return text, results


def _free_port() -> int:
    from helpers.servers import free_port

    return free_port()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "tests"))
    print(main()[0])
