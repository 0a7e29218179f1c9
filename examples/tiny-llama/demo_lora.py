"""The LoRA end of `make demo`: serve the tiny-llama example with NIM_PEFT_SOURCE pointing at the
adapters make_adapters.py wrote, list the models (the base and its heads), ask one adapter and the
base the same question, and stop. The weights are random, so the text is gibberish; that the two
answers differ is the adapter at work.

    python examples/tiny-llama/demo_lora.py MANIFEST PEFT_SOURCE   (port: NIM_HTTP_API_PORT)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "minilm-embed"))  # demo_embed.running, shared by the demos
from demo_embed import running  # noqa: E402

QUESTION = "What is a guitar?"


def main(manifest: str, source: str, port: int) -> int:
    with running(manifest, port, NIM_PEFT_SOURCE=source) as url:
        if url is None:
            return 1
        models = [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]]
        print(f"GET {url}/v1/models -> {models}")
        answers = {}
        for model in (models[1], models[0]):
            reply = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
                "model": model, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16, "temperature": 0})
            answers[model] = reply.raise_for_status().json()["choices"][0]["message"]["content"]
            print(f"{model}: {QUESTION!r} -> {answers[model]!r}")
    if len(models) < 2 or len(set(answers.values())) < 2:
        print("FAILED: no adapter listed, or the adapter answered as the base", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2], int(os.environ.get("NIM_HTTP_API_PORT", "8000"))))
