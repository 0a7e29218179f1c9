"""onnxruntime-genai (a peer, run in bench/.venv-peers) on a graph its model builder made from the
checkpoint a nimbuild profile serves: greedy generation of a fixed number of tokens from the given
prompt ids at each batch size (the same prompt in every row, as the served side's clients send),
with time to first token and decode tokens/s, as JSON on stdout.

    python ortgenai_generate.py MODEL_DIR NEW_TOKENS ROUNDS SIZE [SIZE ...] < prompt_ids.json

The thread count and spin-waiting are the ones the builder's genai_config.json was given (the bench
writes them), and are reported back from that file so the bench can check them."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path


def generate(model, prompt: list[int], batch: int, new_tokens: int) -> tuple[float, float, list[int]]:
    """(seconds to the first new token, seconds for the rest, row 0's new tokens) of one greedy run."""
    import numpy as np
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    length = len(prompt) + new_tokens
    params.set_search_options(max_length=length, min_length=length, do_sample=False, batch_size=batch)
    generator = og.Generator(model, params)
    start = time.perf_counter()
    generator.append_tokens(np.tile(np.asarray(prompt, np.int32), (batch, 1)))
    generator.generate_next_token()
    first = time.perf_counter()
    while not generator.is_done():
        generator.generate_next_token()
    end = time.perf_counter()
    return first - start, end - first, list(map(int, generator.get_sequence(0)[len(prompt):]))


def main() -> None:
    import onnxruntime_genai as og

    folder, new_tokens, rounds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    sizes = [int(s) for s in sys.argv[4:]]
    prompt = json.load(sys.stdin)
    model = og.Model(str(folder))
    generate(model, prompt, 1, 4)  # warm-up
    result = {}
    for size in sizes:
        runs = [generate(model, prompt, size, new_tokens) for _ in range(rounds)]
        result[size] = {"ttft": statistics.median(r[0] for r in runs),
                        "decode": statistics.median(size * (new_tokens - 1) / r[1] for r in runs),
                        "tokens": runs[0][2]}
    options = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]["session_options"]
    print(json.dumps({"sizes": result, "threads": options.get("intra_op_num_threads"),
                      "spin": options.get("session.intra_op.allow_spinning"), "version": og.__version__}))


if __name__ == "__main__":
    main()
