"""The text-generation end of `make demo`: serve the tiny-llama profile with runtime_min, ask one
chat completion (streamed, as chat clients do), print it, and stop the runtime with SIGTERM.
The model's weights are random, so the reply is gibberish; the path it takes is the real one."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "minilm-embed"))  # demo_embed.running, shared by the demos
from demo_embed import running  # noqa: E402

QUESTION = "What is a guitar?"


def main(manifest: str, port: int) -> int:
    with running(manifest, port) as url:
        if url is None:
            return 1
        body = {"model": "tiny-llama", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 24,
                "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        pieces, usage = [], None
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as reply:
            reply.raise_for_status()
            for line in reply.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
                pieces += [c["delta"].get("content") or "" for c in chunk["choices"]]
        print(f"POST {url}/v1/chat/completions (stream) -> {len([p for p in pieces if p])} text events, usage {usage}")
        print(f"{QUESTION!r} -> {''.join(pieces)!r}")
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(os.environ.get("NIM_HTTP_API_PORT", "8000"))))
