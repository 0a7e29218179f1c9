"""The text-generation end of `make demo`: serve the tiny-llama profile with runtime_min, ask one
chat completion (streamed, as chat clients do), then one whose answer must fit a JSON schema and
one that must call a tool, print them, and stop the runtime with SIGTERM. The model's weights are
random, so the text is gibberish; the JSON and the call parse whatever the weights (the grammar
sees to it), and the path they take is the real one."""

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
        return structured(url)


PERSON = {"type": "object", "required": ["name", "age"], "additionalProperties": False,
          "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 120}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "required": ["city"], "properties": {"city": {"type": "string", "maxLength": 16}}}}}


def structured(url: str) -> int:
    """A json_schema answer and a required tool call, each checked to parse as promised."""
    ask = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Who plays the guitar?"}], "max_tokens": 150,
           "temperature": 0.8, "seed": 1}
    reply = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
        **ask, "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}})
    answer = json.loads(reply.raise_for_status().json()["choices"][0]["message"]["content"])
    print(f"response_format json_schema -> {answer}")
    reply = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
        **ask, "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER], "tool_choice": "required"})
    choice = reply.raise_for_status().json()["choices"][0]
    call = choice["message"]["tool_calls"][0]["function"]
    print(f"tool_choice required -> {call['name']}({json.loads(call['arguments'])}), finish_reason {choice['finish_reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(os.environ.get("NIM_HTTP_API_PORT", "8000"))))
