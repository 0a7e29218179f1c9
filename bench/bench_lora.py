"""LoRA heads through runtime_min: decode tokens/s of 8 concurrent streams when they name 0 (the
base), 1, 2 or 8 distinct adapters, on the LoRA profile (adapters as graph inputs, rows of one
batch reading different slots: nimbuild/serving/lora.py), against the plain profile's base alone.
Both profiles come from one compile of the same recipe; every stream generates the same 64 tokens
past the same prompt (end-of-sequence ignored), greedy, 2 threads: bench_llm's measurement.

Adapters are written by PEFT (random weights, rank 8 on the attention projections).
"""

from __future__ import annotations

import concurrent.futures
import statistics
import sys
import time
from pathlib import Path

from common import table

REPO = Path(__file__).resolve().parents[1]
ROUNDS = 3
CLIENTS = 8
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _served(url: str, models: list[str]) -> float:
    """Decode tokens/s summed over one stream per entry of `models`, median of ROUNDS."""
    from bench_llm import NEW_TOKENS, _stream

    rates = []
    with concurrent.futures.ThreadPoolExecutor(len(models)) as pool:
        for _ in range(ROUNDS):
            start = time.perf_counter()
            results = list(pool.map(lambda m: _stream(url, m), models))
            wall = time.perf_counter() - start
            assert all(r[3] == NEW_TOKENS for r in results), "a stream stopped early"
            rates.append(sum(r[3] - 1 for r in results) / (wall - max(r[0] for r in results)))
    return statistics.median(rates)


def _bench(name: str, source: Path, work: Path) -> tuple[list, dict]:
    from bench_llm import _compile, _free_port, _recipe
    from demo_embed import running

    from helpers.lora import write_adapter

    manifest = _compile(_recipe(name, source), work)
    peft = work / "peft"
    for i in range(CLIENTS):
        write_adapter(source, peft / f"adapter-{i}", rank=8, targets=TARGETS, seed=i)
    cases = {"base": [name] * CLIENTS, "1 adapter": ["adapter-0"] * CLIENTS,
             "2 adapters": [f"adapter-{i % 2}" for i in range(CLIENTS)],
             "8 adapters": [f"adapter-{i}" for i in range(CLIENTS)]}
    with running(str(manifest), _free_port()) as url:  # no NIM_PEFT_SOURCE: the plain profile
        _served(url, [name])
        plain = _served(url, [name] * CLIENTS)
    lora = {}
    with running(str(manifest), _free_port(), NIM_PEFT_SOURCE=str(peft)) as url:
        for models in cases.values():  # warm-up: every adapter loaded into its slot once
            _served(url, models[:1])
        for case, models in cases.items():
            lora[case] = _served(url, models)
    rows = [[name, "plain profile", "base", plain, 1.0]]
    rows += [[name, "LoRA profile", case, rate, rate / plain] for case, rate in lora.items()]
    return rows, {"plain": plain, **{case: rate / plain for case, rate in lora.items()}}


def main() -> tuple[str, dict]:
    from bench_llm import for_each_model

    per_model = for_each_model(_bench)
    rows = [row for model_rows, _ in per_model.values() for row in model_rows]
    text = table(f"LoRA: decode tokens/s of {CLIENTS} concurrent streams (fp32, greedy, 2 threads, median of {ROUNDS})",
                 ["model", "profile", "streams name", "decode tok/s", "/ plain base"], rows)
    return text, {name: data for name, (_, data) in per_model.items()}


if __name__ == "__main__":
    sys.path[:0] = [str(REPO / "tests"), str(REPO / "examples")]
    print(main()[0])
