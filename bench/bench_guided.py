"""Structured output and forced tool calls against free text, through runtime_min, on the same
models, prompt, threads and greedy decoding: the cost of llguidance's token mask in the serving
loop (nimbuild/serving/constrained.py), at 1 and 8 concurrent clients.

A grammar decides where its output ends, so the three kinds of request do not generate the same
number of tokens; what is compared is the decode rate (tokens after the first / the time they
took, summed over the concurrent streams), and each output's token count is in the table. The
schemas fix their outputs' length (exact item counts, fixed-length strings), so every request of a
kind does the same work, and every constrained output is checked against its schema here. Free
text ignores end-of-sequence to the same 64 tokens bench_llm generates.
"""

from __future__ import annotations

import concurrent.futures
import json
import statistics
import sys
import time
from pathlib import Path

from common import http_client, table

REPO = Path(__file__).resolve().parents[1]
ROUNDS = 3
PROMPT = "A man is playing a guitar in the park while the rain falls softly on the leaves"
# 12 four-letter words and a number: about 60 tokens of tiny-llama's tokenizer whatever the weights
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["words", "count"],
          "properties": {"words": {"type": "array", "minItems": 12, "maxItems": 12,
                                   "items": {"type": "string", "pattern": "^[a-z]{4}$"}},
                         "count": {"type": "integer", "minimum": 100, "maximum": 999}}}
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "additionalProperties": False, "required": ["terms"],
    "properties": {"terms": {"type": "array", "minItems": 10, "maxItems": 10,
                             "items": {"type": "string", "pattern": "^[a-z]{4}$"}}}}}}
# every kind offers the tool, so every prompt is the same (the tool rendered in it): the only
# difference left is the mask
KINDS = {
    "free text": {"max_tokens": 64, "ignore_eos": True, "tools": [TOOL], "tool_choice": "auto"},
    "json_schema": {"max_tokens": 200, "tools": [TOOL], "tool_choice": "auto",
                    "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}}},
    "tool_choice required": {"max_tokens": 200, "tools": [TOOL], "tool_choice": "required"},
}


def _check(kind: str, message: dict) -> None:
    """Every constrained output fits: otherwise the rate would be of some other work."""
    import jsonschema

    if kind == "json_schema":
        jsonschema.validate(json.loads(message["content"]), SCHEMA)
    elif kind == "tool_choice required":
        (call,) = message["tool_calls"]
        jsonschema.validate(json.loads(call["function"]["arguments"]), TOOL["function"]["parameters"])


def _stream(url: str, model: str, kind: str) -> tuple[float, float, int]:
    """(time to first token, total time, generated tokens) of one streamed chat completion."""
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, **KINDS[kind]}
    start = time.perf_counter()
    first, usage, content, calls = None, {}, [], []
    with http_client().stream("POST", f"{url}/v1/chat/completions", json=body) as reply:
        for line in reply.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                assert "error" not in chunk, chunk
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    first = first or time.perf_counter()
                    content.append(choice["delta"].get("content") or "")
                    calls += choice["delta"].get("tool_calls") or []
    _check(kind, {"content": "".join(content), "tool_calls": calls})
    return first - start, time.perf_counter() - start, usage["completion_tokens"], usage["prompt_tokens"]


def _served(url: str, model: str, kind: str, concurrency: int) -> dict:
    decode, tokens, prompts = [], [], set()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for _ in range(ROUNDS):
            start = time.perf_counter()
            results = list(pool.map(lambda _: _stream(url, model, kind), range(concurrency)))
            wall = time.perf_counter() - start
            tokens += [r[2] for r in results]
            prompts |= {r[3] for r in results}
            decode.append(sum(r[2] - 1 for r in results) / (wall - max(r[0] for r in results)))
    assert len(prompts) == 1, prompts
    return {"decode": statistics.median(decode), "tokens": statistics.median(tokens), "prompt": prompts.pop()}


def _bench(name: str, source: Path, work: Path) -> tuple[list, dict]:
    from bench_llm import _compile, _free_port, _recipe
    from demo_embed import running

    manifest = _compile(_recipe(name, source), work)
    with running(str(manifest), _free_port()) as url:
        if url is None:
            raise RuntimeError(f"runtime_min did not start on {name}")
        for kind in KINDS:  # warm-up, the first grammar's tokenizer view included
            _served(url, name, kind, 1)
        measured = {(kind, c): _served(url, name, kind, c) for c in (1, 8) for kind in KINDS}
    assert len({m["prompt"] for m in measured.values()}) == 1, "every kind is to take the same prompt"
    rows = [[name, kind, c, m["tokens"], m["decode"], m["decode"] / measured[("free text", c)]["decode"]]
            for (kind, c), m in measured.items()]
    ratios = {f"{kind} c={c}": m["decode"] / measured[("free text", c)]["decode"] for (kind, c), m in measured.items()
              if kind != "free text"}
    return rows, ratios


def main() -> tuple[str, dict]:
    from bench_llm import for_each_model

    per_model = for_each_model(_bench)
    rows = [row for model_rows, _ in per_model.values() for row in model_rows]
    results = {name: ratios for name, (_, ratios) in per_model.items()}
    worst = min(r for ratios in results.values() for r in ratios.values())
    text = table("Constrained against free text (decode tokens/s summed over concurrent streams; fp32, greedy, "
                 "2 threads, median of 3)", ["model", "request", "concurrency", "tokens each", "decode tok/s",
                                             "/ free text"], rows)
    return text + f"\nworst ratio {worst:.2f} (goal: >= 0.5, the mask must not halve the rate)", results


if __name__ == "__main__":
    sys.path[:0] = [str(REPO / "tests"), str(REPO / "examples")]
    print(main()[0])
