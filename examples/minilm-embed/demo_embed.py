"""The end of `make demo`: serve a profile with runtime_min, ask for two embeddings, print their
similarity, and stop the runtime (SIGTERM, as an orchestrator would)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np

SENTENCES = ("A man is playing a guitar.", "Someone performs music on a guitar.")


@contextlib.contextmanager
def running(manifest: str, port: int, **env: str):
    """runtime_min serving `manifest`, ready; stopped with SIGTERM afterwards. Yields its URL, or
    None (with the reason printed) when it did not come up. `env` adds to the environment."""
    url = f"http://127.0.0.1:{port}"
    runtime = subprocess.Popen([sys.executable, "-m", "runtime_min", "serve", "--manifest", manifest,
                                "--host", "127.0.0.1", "--port", str(port)], env={**os.environ, **env})
    try:
        deadline = time.monotonic() + 120
        while True:
            if runtime.poll() is not None:
                print(f"runtime_min exited with status {runtime.returncode}", file=sys.stderr)
                yield None
                return
            try:
                if httpx.get(f"{url}/v1/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                print("runtime_min did not become ready in 120 s", file=sys.stderr)
                yield None
                return
            time.sleep(0.2)
        yield url
    finally:
        if runtime.poll() is None:
            runtime.send_signal(signal.SIGTERM)
        runtime.wait(timeout=60)


def main(manifest: str, port: int = 8000) -> int:
    with running(manifest, port) as url:
        if url is None:
            return 1
        reply = httpx.post(f"{url}/v1/embeddings", json={"model": "minilm-embed", "input": list(SENTENCES)}, timeout=30)
        reply.raise_for_status()
        a, b = (np.array(d["embedding"]) for d in reply.json()["data"])
        print(f'POST {url}/v1/embeddings -> {len(a)}-dimensional embeddings, {reply.json()["usage"]["total_tokens"]} tokens')
        print(f'cosine similarity of "{SENTENCES[0]}" and "{SENTENCES[1]}": {a @ b / (np.linalg.norm(a) * np.linalg.norm(b)):.4f}')
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(os.environ.get("NIM_HTTP_API_PORT", "8000"))))
