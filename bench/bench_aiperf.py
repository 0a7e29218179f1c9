"""NVIDIA's own load generator, aiperf (genai-perf's successor, what NIM's published benchmarks use),
against runtime_min's OpenAI routes, beside this bench's standard-library clients sending the very
same requests, side by side in one run: /v1/chat/completions and /v1/completions streamed on the
tiny-llama example (1 and 8 concurrent requests, 64 tokens each, end-of-sequence ignored), and
/v1/embeddings on MiniLM (1 and 32, one sentence a request).

What each client reports is its own measurement of the same server: requests/s, output tokens/s,
time to first token, inter-token latency (aiperf's definition: (last - first) / (tokens - 1) per
request) and request latency. Both clients share the server's two cores, so the CPU each spends
per request is measured too (the load generator's processes, from /proc, over aiperf's own
profiling window; the standard-library client's from its thread time), beside the server's (the
runtime's process tree). A client that spends more CPU per request takes it from the server it
measures; the table says how much.

The same work is checked: aiperf runs first on a fixed input file (the same prompt or sentence
every request), and the standard-library client then sends the payloads aiperf recorded in its
inputs.json, byte for byte; every streamed answer must carry 64 completion tokens by the server's
own count on both sides.

perf_analyzer (PyPI perf-analyzer 0.1.0), which would measure Triton directly, does not run here:
its binary needs glibc 2.38 and Debian 12 has 2.36; bench_peer_nmt measures Triton directly with
tritonclient instead."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import AIPERF_VENV, compile_recipe, cpu_seconds, process_tree, table

REPO = Path(__file__).resolve().parents[1]
THREADS = 2
NEW_TOKENS = 64
PROMPT = "A man is playing a guitar in the park while the rain falls softly on the leaves"
SENTENCE = "Someone performs music on a guitar in the park."
# (route kind, aiperf's endpoint type, model example, concurrencies, requests per concurrency)
CASES = [("chat", "tiny-llama", {1: 48, 8: 160}), ("completions", "tiny-llama", {1: 48, 8: 160}),
         ("embeddings", "minilm-embed", {1: 600, 32: 2400})]
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings"}


def aiperf_binary() -> Path:
    binary = AIPERF_VENV / "bin" / "aiperf"
    if not binary.exists():
        raise SystemExit(f"{binary} is missing: run `make peers` (make bench does)")
    return binary


class _TreeCPU:
    """CPU seconds of a process and its descendants, from /proc: `now()` on demand, or sampled
    every 100 ms while `sampling()` (a window's share is then read afterwards with `between`).
    A process that exits keeps its last reading."""

    def __init__(self, pid: int):
        self.pid, self.samples, self.seen, self.pids, self.found = pid, [], {}, [], 0.0

    def now(self) -> float:
        if time.monotonic() - self.found > 1.0:  # new processes (aiperf's services start late)
            self.pids, self.found = process_tree(self.pid), time.monotonic()
        for pid in self.pids:
            spent = cpu_seconds(pid)
            if spent is not None:
                self.seen[pid] = spent
        return sum(self.seen.values())

    @contextlib.contextmanager
    def sampling(self, *others: "_TreeCPU"):
        """Sample this tree (and `others`) every 100 ms in a thread until the block ends."""
        stopping = threading.Event()

        def run() -> None:
            while not stopping.wait(0.1):
                stamp = time.time()
                for tree in (self, *others):
                    tree.samples.append((stamp, tree.now()))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stopping.set()
            thread.join()

    def between(self, start: float, end: float) -> float:
        """CPU seconds spent between two wall-clock times (the samples nearest inside them)."""
        inside = [cpu for t, cpu in self.samples if start <= t <= end]
        assert len(inside) > 1, "no two CPU samples inside the window"
        return inside[-1] - inside[0]


def _aiperf(kind: str, model: str, port: int, tokenizer: Path, concurrency: int, requests: int, work: Path,
            server: _TreeCPU) -> dict:
    """One aiperf profile; its figures, its CPU and the server's over its profiling window, and the
    payloads it sent."""
    text = SENTENCE if kind == "embeddings" else PROMPT
    inputs = work / f"{kind}-input.jsonl"
    inputs.write_text(json.dumps({"text": text}) + "\n")
    out = work / f"aiperf-{kind}-{concurrency}"
    command = [str(aiperf_binary()), "profile", "-m", model, "--url", f"http://127.0.0.1:{port}",
               "--endpoint-type", kind, "--tokenizer", str(tokenizer), "--concurrency", str(concurrency),
               "--request-count", str(requests), "--warmup-request-count", str(concurrency),
               "--input-file", str(inputs), "--custom-dataset-type", "single_turn", "--random-seed", "1",
               "--output-artifact-dir", str(out), "--ui-type", "none", "--no-auto-plot"]
    if kind != "embeddings":
        command += ["--streaming", "--use-server-token-count", "--prompt-output-tokens-mean", str(NEW_TOKENS),
                    "--extra-inputs", "ignore_eos:true", "--extra-inputs", "temperature:0"]
    # aiperf's offline mode looks a local tokenizer folder up in the hub's cache and fails; a
    # local folder needs no hub, so the variable is left out for it alone
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    cpu = _TreeCPU(child.pid)
    with cpu.sampling(server):
        output = child.communicate(timeout=900)[0]
    report = out / "profile_export_aiperf.json"
    if child.returncode != 0 or not report.exists():
        raise RuntimeError(f"aiperf {kind} at {concurrency} failed: {output.strip().splitlines()[-1:]}")
    figures = json.loads(report.read_text())
    start, end = (_seconds(figures[k]) for k in ("start_time", "end_time"))
    sent = [entry["payloads"][0] for entry in json.loads((out / "inputs.json").read_text())["data"]]
    count = int(figures["request_count"]["avg"])
    return {"figures": figures, "count": count, "payloads": sent,
            "client_cpu_ms": cpu.between(start, end) * 1e3 / count,
            "server_cpu_ms": server.between(start, end) * 1e3 / count}


def _seconds(stamp) -> float:
    """aiperf's start/end times (ISO text or nanoseconds) as epoch seconds."""
    if isinstance(stamp, (int, float)):
        return stamp / 1e9 if stamp > 1e12 else float(stamp)
    from datetime import datetime

    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


_local = threading.local()


def _post(port: int, path: str, body: bytes, stream: bool) -> tuple[float, list[float], dict]:
    """One request on this thread's kept connection: (start, arrival time of each content chunk,
    the last JSON the server sent: the usage chunk when streaming, the whole answer else)."""
    connection = getattr(_local, "connection", None)
    if connection is None:
        connection = _local.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    start = time.perf_counter()
    connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    reply = connection.getresponse()
    if reply.status != 200:
        raise RuntimeError(f"POST {path}: HTTP {reply.status}: {reply.read()[:200]!r}")
    if not stream:
        answer = json.loads(reply.read())
        return start, [time.perf_counter()], answer
    chunks, last = [], {}
    while line := reply.readline():
        if line.startswith(b"data: {"):
            last = json.loads(line[6:])
            choices = last.get("choices") or []
            if choices and ((choices[0].get("delta") or {}).get("content") or choices[0].get("text")):
                chunks.append(time.perf_counter())
    return start, chunks, last


def _standard(kind: str, port: int, concurrency: int, payloads: list[dict], count: int, server: _TreeCPU) -> dict:
    """aiperf's payloads again (its dataset, cycled to as many requests as it sent), from
    `concurrency` threads of http.client: the same figures, by the same definitions, and the CPU
    spent on each side."""
    stream = kind != "embeddings"
    bodies = [json.dumps(payloads[i % len(payloads)]).encode() for i in range(count)]
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda b: _post(port, PATHS[kind], b, stream), bodies[:concurrency]))  # warm, as aiperf's
        served, own = server.now(), time.process_time()
        wall = time.perf_counter()
        results = list(pool.map(lambda b: _post(port, PATHS[kind], b, stream), bodies))
        wall = time.perf_counter() - wall
        client_cpu, served = time.process_time() - own, server.now() - served
    latencies = [chunks[-1] - start for start, chunks, _ in results]
    out = {"request_throughput": len(results) / wall, "request_latency_p50": _p50(latencies) * 1e3,
           "client_cpu_ms": client_cpu * 1e3 / len(results), "server_cpu_ms": served * 1e3 / len(results)}
    if stream:
        tokens = [last["usage"]["completion_tokens"] for _, _, last in results]
        assert set(tokens) == {NEW_TOKENS}, f"completion tokens by the server's count: {sorted(set(tokens))}"
        out.update(output_token_throughput=sum(tokens) / wall,
                   ttft_p50=_p50([chunks[0] - start for start, chunks, _ in results]) * 1e3,
                   itl_p50=_p50([(chunks[-1] - chunks[0]) / (n - 1) for (_, chunks, _), n in zip(results, tokens)]) * 1e3)
    return out


def _p50(values: list[float]) -> float:
    return statistics.median(values)


def _aiperf_row(result: dict, stream: bool) -> dict:
    f = result["figures"]
    row = {"request_throughput": f["request_throughput"]["avg"], "request_latency_p50": f["request_latency"]["p50"],
           "client_cpu_ms": result["client_cpu_ms"], "server_cpu_ms": result["server_cpu_ms"]}
    if stream:
        tokens = f["usage_completion_tokens"]
        assert tokens["min"] == tokens["max"] == NEW_TOKENS, f"completion tokens by the server's count: {tokens}"
        row.update(output_token_throughput=f["output_token_throughput"]["avg"],
                   ttft_p50=f["time_to_first_token"]["p50"], itl_p50=f["inter_token_latency"]["p50"])
    return row


def _serve(manifest: Path, work: Path, port: int):
    from bench_runtime import _start_runtime

    return _start_runtime(manifest, work / "cache", port, profile="onnxruntime-fp32-throughput")[0]


def main() -> tuple[str, dict]:
    from bench_runtime import _stop

    from helpers.servers import free_port

    os.environ["NIMBUILD_ORT_THREADS"] = str(THREADS)
    rows, data = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for example in ("tiny-llama", "minilm-embed"):
            compile_recipe(REPO / "examples" / example / "recipe.yaml", work / example)
            port = free_port()
            runtime = _serve(work / example / "profiles.yaml", work, port)
            server = _TreeCPU(runtime.pid)
            tokenizer = work / example / "profiles" / "onnxruntime-fp32-throughput" / "tokenizer"
            try:
                for kind, model, counts in (c for c in CASES if c[1] == example):
                    for concurrency, requests in counts.items():
                        peer = _aiperf(kind, model, port, tokenizer, concurrency, requests, work, server)
                        stream = kind != "embeddings"
                        measured = {"aiperf": _aiperf_row(peer, stream),
                                    "http.client": _standard(kind, port, concurrency, peer["payloads"], peer["count"],
                                                                 server)}
                        data[f"{kind} c={concurrency}"] = measured
                        for client, row in measured.items():
                            rows.append([f"{kind}, {concurrency} concurrent", client, row["request_throughput"],
                                         row.get("output_token_throughput", "-"), row.get("ttft_p50", "-"),
                                         row.get("itl_p50", "-"), row["request_latency_p50"], row["client_cpu_ms"],
                                         row["server_cpu_ms"]])
            finally:
                _stop(runtime)
    text = table("runtime_min measured by aiperf and by the standard-library client, the same payloads (tiny-llama "
                 f"streamed, {NEW_TOKENS} tokens; MiniLM one sentence a request; {THREADS} ORT threads; medians "
                 "and rates over each client's run)",
                 ["route", "client", "req/s", "out tok/s", "TTFT p50 ms", "ITL p50 ms", "latency p50 ms",
                  "client CPU ms/req", "server CPU ms/req"], rows)
    return text, data


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "tests"))
    print(main()[0])
