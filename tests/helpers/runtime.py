"""runtime_min as a user starts it: `python -m runtime_min serve`, in a process of its own."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from runtime_min.triton import free_ports

SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
             "Un homme joue de la guitare, dans un parc, tard le soir, pendant que la pluie tombe doucement."]



class Runtime:
    def __init__(self, manifest: Path, cache: Path, registry: str | None = None, env: dict | None = None):
        self.port, self.grpc_port = free_ports(2)  # distinct: two free_port() calls may draw one port twice
        self.log = cache / f"runtime-{self.port}.log"
        cache.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "runtime_min", "serve", "--manifest", str(manifest), "--host", "127.0.0.1",
                "--port", str(self.port)] + (["--registry", registry] if registry else [])
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"),
                                        env={**os.environ, "NIM_CACHE_PATH": str(cache),
                                             "NIM_GRPC_API_PORT": str(self.grpc_port), **(env or {})})
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"runtime exited early:\n{self.log.read_text()[-2000:]}"
            try:
                if httpx.get(f"{self.url}/v1/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready after {timeout}s:\n{self.log.read_text()[-2000:]}")

    @property
    def triton_url(self) -> str:
        return re.findall(r"Triton ready on (127\.0\.0\.1:\d+)", self.log.read_text())[-1]

    def triton_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid), "tritonserver"], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def stop(self) -> int:
        triton = self.triton_pids()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        for pid in triton:
            assert not Path(f"/proc/{pid}").exists(), "tritonserver outlived the runtime"
        return code


def serving(manifest: Path, cache: Path, **env: str):
    """runtime_min serving `manifest` until the generator is closed (a fixture's `yield from`)."""
    runtime = Runtime(manifest, cache, env=env)
    runtime.wait_ready(120)
    yield runtime
    assert runtime.stop() == 0
