"""runtime_min on the MiniLM example: start-to-ready against a bare tritonserver on the same model
repository, and embeddings/s through the runtime against onnxruntime in-process on the same graph,
tokenisation (unpadded, truncated at the model's length, as the server tokenises a request) and
thread count, at concurrency 1, 8 and 32 (measured in one run), with latency and peak memory. Two
in-process baselines: one sentence per call (what each client thread does), and batches of the
concurrency's size padded to their longest sentence with masked mean pooling (what the server's
dynamic batcher can do at best). Where the served time goes: CPU per embedding of each process
(this load generator, the runtime's API, tritonserver, the model's Python stub) and Triton's own
per-call statistics, over the same window."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from common import cpu_seconds, memory_kib, post_json, process_tree, table

REPO = Path(__file__).resolve().parents[1]
WINDOW_S = 5.0  # each rate is measured over this many seconds of steady load
SENTENCES = ["A man is eating food.", "The girl is carrying a baby.", "A man is riding a horse.",
             "Someone performs music on a guitar in the park."]


def _compiled(tmp: Path) -> Path:
    out = tmp / "out"
    subprocess.run([str(Path(sys.executable).parent / "nimbuild"), "-q", "compile",
                    str(REPO / "examples" / "minilm-embed" / "recipe.yaml"), "--out", str(out)], check=True)
    return out


# log lines that end each stage of a start, in order (runtime_min/service.py's messages)
STAGES = [("interpreter, imports, manifest", "Manifest: "), ("select, verify, write the repository", "Model repository: "),
          ("tritonserver to ready", "Triton ready on "), ("the API's first ready answer", None)]


def _start_runtime(manifest: Path, cache: Path, port: int, log: Path | None = None,
                   profile: str = "onnxruntime-fp32-throughput") -> tuple[subprocess.Popen, float]:
    start = time.perf_counter()
    stderr = log.open("w") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "runtime_min", "serve", "--manifest", str(manifest),
                             "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=stderr,
                            # the fp32 profile: the in-process baseline runs the same (fp32) graph
                            env={**os.environ, "NIM_CACHE_PATH": str(cache),
                                 "NIM_MODEL_PROFILE": profile})
    if log:
        stderr.close()  # the child has its own copy
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health/ready", timeout=1).status_code == 200:
                return proc, time.perf_counter() - start
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("runtime_min exited while starting")
        time.sleep(0.02)


def _stages(log: Path, began: float, ready: float) -> list[float]:
    """Seconds spent in each of STAGES, from the log's timestamps (wall clock, milliseconds)."""
    from datetime import datetime

    ends = []
    lines = log.read_text().splitlines()
    for _, marker in STAGES[:-1]:
        line = next(line for line in lines if marker in line)
        ends.append(datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp())
    ends.append(ready)
    return [end - previous for previous, end in zip([began, *ends], ends)]


def _bare_triton(workspace: Path, cache: Path) -> float:
    from runtime_min.deploy import plan, read_info, write_store
    from runtime_min.triton import TritonServer, locate_triton

    repository = Path(tempfile.mkdtemp(dir=cache))
    info, install = read_info(workspace), locate_triton(cache)
    _, core = plan("onnxruntime", workspace, info, [install], gpu=False)
    write_store("minilm-embed", info, core, workspace, repository)
    server = TritonServer(install, repository, cache / "bare.log")
    start = time.perf_counter()
    server.start()
    elapsed = time.perf_counter() - start
    server.stop()
    return elapsed


def _drive(call, concurrency: int, seconds: float, warmup: float = 1.0) -> tuple[float, list[float]]:
    """Steady-state rate: `concurrency` threads call back to back; only calls that start after the
    warm-up and end inside the window count (no ramp-up, no tail of idle threads)."""
    latencies: list[float] = []
    lock = threading.Lock()
    begin = time.perf_counter() + warmup
    end = begin + seconds

    def worker(w: int) -> None:
        local, i = [], 0
        while True:
            t = time.perf_counter()
            if t >= end:
                break
            call(SENTENCES[(w + i) % len(SENTENCES)])
            done = time.perf_counter()
            if t >= begin and done <= end:
                local.append(done - t)
            i += 1
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies) / seconds, sorted(latencies)


def _in_process(workspace: Path):
    """The same graph, tokenisation, pooling and thread count, with no server in between:
    (embed one text, embed a batch of texts)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(workspace / "tokenizer" / "tokenizer.json"))
    # tokenizer.json pads every text to 128 tokens; the server tokenises each request unpadded,
    # truncated at the model's length: a baseline that pads does ~10x the work on these sentences
    tokenizer.no_padding()
    tokenizer.enable_truncation(256)
    session = ort.InferenceSession(str(workspace / "model.onnx"), providers=["CPUExecutionProvider"])

    def embed_batch(texts: list[str]) -> np.ndarray:
        encodings = tokenizer.encode_batch(texts)
        longest = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), longest), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, e in enumerate(encodings):
            ids[row, :len(e.ids)], mask[row, :len(e.ids)] = e.ids, 1
        hidden = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
        pooled = (hidden * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    return (lambda text: embed_batch([text])), embed_batch


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class _Where:
    """CPU seconds per process of the runtime's tree (API, tritonserver, model stub) and of this
    load generator, and Triton's statistics for the model, between `start()` and `stop(calls)`."""

    def __init__(self, runtime_pid: int):
        import re

        self.groups: dict[str, list[int]] = {"API (runtime_min)": [runtime_pid], "tritonserver": [], "model stub": []}
        for pid in process_tree(runtime_pid)[1:]:
            command = _cmdline(pid)
            if "triton_python_backend_stub" in command:
                self.groups["model stub"].append(pid)
            elif "tritonserver" in command and "--http-port" in command:
                self.groups["tritonserver"].append(pid)
                port = re.search(r"--http-port=(\d+)", command).group(1)
                self.triton = f"http://127.0.0.1:{port}"

    def _sample(self) -> tuple[dict, float, dict]:
        cpu = {name: sum(cpu_seconds(pid) or 0.0 for pid in pids) for name, pids in self.groups.items()}
        stats = httpx.get(f"{self.triton}/v2/models/minilm-embed/stats").json()["model_stats"][0]
        return cpu, time.process_time(), stats

    def start(self) -> None:
        self.before = self._sample()

    def stop(self, embeddings: int) -> dict:
        (cpu0, own0, stats0), (cpu1, own1, stats1) = self.before, self._sample()
        per = {"load generator": (own1 - own0) * 1e3 / embeddings}
        per.update({name: (cpu1[name] - cpu0[name]) * 1e3 / embeddings for name in cpu1})
        count = lambda s: int(s["inference_stats"]["success"]["count"])
        ns = lambda s, key: int(s["inference_stats"][key]["ns"])
        calls = max(1, count(stats1) - count(stats0))
        executions = max(1, int(stats1["execution_count"]) - int(stats0["execution_count"]))
        return {"cpu_ms_per_embedding": per, "triton_calls_per_embedding": calls / embeddings,
                "texts_per_model_execution": embeddings / executions,
                "triton_queue_ms_per_call": (ns(stats1, "queue") - ns(stats0, "queue")) / 1e6 / calls,
                "model_ms_per_execution": (ns(stats1, "compute_infer") - ns(stats0, "compute_infer")) / 1e6 / executions}


def _peak_rss_mib(pid: int) -> float:
    """Sum of VmHWM (peak RSS) over the runtime and its descendants (tritonserver, backend stub)."""
    return sum(memory_kib(p, "VmHWM") or 0 for p in process_tree(pid)) / 1024


def main() -> str:
    from helpers.servers import free_port

    tmp = Path(tempfile.mkdtemp(prefix="nimbuild-bench-rt-"))
    cache = tmp / "cache"
    out = _compiled(tmp)
    workspace = out / "profiles" / "onnxruntime-fp32-throughput"
    manifest = out / "profiles.yaml"
    _stop(_start_runtime(manifest, cache, free_port())[0])  # warm: the Triton copy lands in the cache
    runtime_starts, bare_starts, stages = [], [], []
    for _ in range(3):
        began = time.time()
        proc, seconds = _start_runtime(manifest, cache, free_port(), log=tmp / "start.log")
        stages.append(_stages(tmp / "start.log", began, time.time()))
        runtime_starts.append(seconds)
        _stop(proc)
        bare_starts.append(_bare_triton(workspace, cache))
    start_rows = [["bare tritonserver on the same repository", statistics.median(bare_starts), 1.0],
                  ["runtime_min serve (select, verify, Triton, API)", statistics.median(runtime_starts),
                   statistics.median(runtime_starts) / statistics.median(bare_starts)]]
    stage_rows = [[f"  {name}", statistics.median(s[i] for s in stages), ""] for i, (name, _) in enumerate(STAGES)]
    start_rows += stage_rows

    port = free_port()
    proc, _ = _start_runtime(manifest, cache, port)
    embed, embed_batch = _in_process(workspace)
    rows, figures, breakdowns = [], [], []
    try:
        sent = [0]

        def via_runtime(text: str) -> None:
            reply = post_json("127.0.0.1", port, "/v1/embeddings", {"model": "minilm-embed", "input": text})
            assert len(reply["data"][0]["embedding"]) == 384
            sent[0] += 1  # under the GIL; read only after the threads end

        where = _Where(proc.pid)
        for concurrency in (1, 8, 32):
            sent[0] = 0
            where.start()
            served, lat = _drive(via_runtime, concurrency, WINDOW_S)
            breakdowns.append({"concurrency": concurrency, **where.stop(sent[0])})
            direct, direct_lat = _drive(embed, concurrency, WINDOW_S)
            batched = _batched_rate(embed_batch, concurrency, 40 * concurrency)
            rows.append([concurrency, served, direct, batched, served / direct, served / batched,
                         lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3, direct_lat[len(direct_lat) // 2] * 1e3])
            figures.append(dict(zip(["concurrency", "served_per_s", "in_process_unbatched_per_s",
                                     "in_process_batched_per_s", "served_over_unbatched", "served_over_batched",
                                     "p50_ms", "p99_ms", "in_process_p50_ms"], rows[-1])))
        peak = _peak_rss_mib(proc.pid)
    finally:
        _stop(proc)
    text = "\n\n".join([
        table("Start to ready, profile cached (median of 3, seconds), and the runtime's stages (from its log)",
              ["what", "seconds", "x bare Triton"], start_rows),
        table(f"Embeddings/s, one sentence per request, {os.cpu_count()} CPUs (runtime peak RSS {peak:.0f} MiB "
              "incl. Triton and its model stub); in-process: the same graph and tokenisation, one text per call "
              "from as many threads, or batches of the concurrency's size",
              ["concurrency", "runtime/s", "ORT 1/call /s", "ORT batched /s", "runtime / 1-per-call",
               "runtime / batched", "p50 ms", "p99 ms", "ORT p50 ms"], rows),
        table("Where the served time goes: CPU ms per embedding by process, over each served window; Triton "
              "calls per embedding (under 1: the API put concurrent requests into one call), texts per model "
              "execution, and the model's own time per execution",
              ["concurrency", *breakdowns[0]["cpu_ms_per_embedding"], "Triton calls/emb", "texts/exec",
               "model ms/exec"],
              [[b["concurrency"], *b["cpu_ms_per_embedding"].values(), b["triton_calls_per_embedding"],
                b["texts_per_model_execution"], b["model_ms_per_execution"]] for b in breakdowns]),
    ])
    data = {"start_seconds": {"bare_triton": statistics.median(bare_starts), "runtime": statistics.median(runtime_starts),
                              "runtime_stages": {row[0].strip(): row[1] for row in stage_rows}},
            "embeddings": figures, "where_the_time_goes": breakdowns, "peak_rss_mib": peak}
    return text, data


def _batched_rate(embed_batch, size: int, total: int) -> float:
    """Embeddings/s of in-process batches of `size` sentences (cycling through SENTENCES)."""
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(total)]
    embed_batch(texts[:size])  # warm
    start = time.perf_counter()
    for i in range(0, total, size):
        embed_batch(texts[i:i + size])
    return total / (time.perf_counter() - start)


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "tests"))
    print(main()[0])
