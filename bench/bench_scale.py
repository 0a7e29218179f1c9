"""Real sizes (`make bench-scale`; too slow for every `make bench`): random-weight checkpoints with
real models' shapes, made here by scripts/make_scale_models.py, compiled and served as a user's
would be. Per model: the checkpoint's size, the compile's wall time and peak memory (its process's
maximum resident set, from wait4) against that size, the profile's size, and what the served
profile does (decode tokens/s, embeddings/s or RTFX), with the runtime's peak memory.

- qwen2.5-0.5b: Qwen2.5-0.5B's configuration (494M parameters, 2 GB fp32 in 4 safetensors shards),
  text generation, streamed /v1/completions, 64 tokens at 1 and 4 concurrent requests.
- bert-large: BERT-large's shapes (335M parameters, 1.3 GB), embeddings, 1 and 8 concurrent.
- fastconformer-110m: Parakeet's 110M FastConformer encoder shapes as a NeMo CTC model, offline
  transcription of the asr benches' clips, 1 and 8 concurrent.
- qwen2.5-1.5b (only when NIMBUILD_SCALE_LARGEST=1): Qwen2.5-1.5B's configuration
  (1.54B parameters, 6.2 GB fp32), compiled only.
- mistral-7b (only when NIMBUILD_SCALE_7B=1): Mistral-7B-v0.3's configuration in bf16 (14.5 GB),
  compiled to an onnxruntime int4 profile (the fp32 graph written, never opened: nothing serves it)
  and served; beside it, in the same run and on the same checkpoint, onnxruntime-genai's model
  builder (int4, CPU) and Optimum's `optimum-cli export onnx` (the fp32 graph a user gets from it),
  each stopped if its resident memory passes PEER_LIMIT_GIB, which this 23 GiB machine leaves for
  one process. Its random weights make greedy tokens near-ties, so its recipe's gate counts tokens
  without a floor and holds the perplexity on held sequences to int4's default (10%): the figures, not a pass,
  are what this run is for.

Every compile runs `nimbuild compile` in a process of its own with the generic fp32 target only,
so its peak memory is the export's, the parity check's and the profile's writing, nothing else.
NIMBUILD_SCALE_MODELS=a,b runs only those."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import memory_kib, table

REPO = Path(__file__).resolve().parents[1]
THREADS = 2
NEW_TOKENS = 64
MODELS = ("qwen2.5-0.5b", "bert-large", "fastconformer-110m")
LARGEST = "qwen2.5-1.5b"
SEVEN_B = "mistral-7b"
PEER_LIMIT_GIB = 21.0
ORTGENAI_BUILDER = REPO / "bench" / ".venv-peers" / "ortgenai-builder"
OPTIMUM = REPO / "bench" / ".venv-optimum"
# the 7B's recipe: int4 for the generic target, no fp32 target (its fp32 graph, 29 GB, is served by
# nothing and not opened); a 256-token context keeps transformers' bf16 parity record to minutes
SEVEN_B_RECIPE = """name: mistral-7b
release: 0.1.0
source:
  hf: {source}
task: text-generation
export:
  opset: 18
  inputs:
    input_ids: {{batch: [1, 2, 4], sequence: [1, 128, 256]}}
precisions:
  fp32: {{}}
  int4: {{weight_only: {{block_size: 32}}, gate: {{tokens_min: 0.0}}}}
targets:
  - {{type: generic, backend: onnxruntime, precisions: [int4]}}
serving: {{max_batch_size: 4, profile: throughput}}
"""


def _recipe(kind: str, source: Path) -> str:
    """The example recipe of the model's task with this source and only its generic fp32 target
    (the 7B: SEVEN_B_RECIPE)."""
    if kind == SEVEN_B:
        return SEVEN_B_RECIPE.format(source=source)
    example, key = {"qwen": ("tiny-llama", "hf"), "bert": ("minilm-embed", "hf"),
                    "fast": ("asr-digits", "nemo")}[kind[:4]]
    lines = (REPO / "examples" / example / "recipe.yaml").read_text().splitlines()
    out = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("name:"):
            line = f"name: {kind}"
        elif stripped.startswith(f"{key}:") and line.startswith("  "):
            line = f"  {key}: {source}"
        elif stripped.startswith("- {type:"):
            generic = "  - {type: generic, backend: onnxruntime, precisions: [fp32]}"
            if "generic" not in stripped or generic in out:  # one target (tiny-llama's LoRA target is generic too)
                continue
            line = generic
        elif stripped.startswith("audio:"):  # the digits' speech checks the front end; any speech does
            line = line.replace("speech/", f"{REPO / 'examples' / 'asr-digits' / 'speech'}/")
        elif stripped.startswith(("calibration", "fp8:", "int8:", "fp16:")):  # variants need gates and data
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def _compile(recipe: Path, out: Path) -> dict:
    """`nimbuild compile` in its own process: wall seconds, peak RSS (wait4's ru_maxrss), the exit,
    and where the memory went: the resident set sampled every 0.2 s, its peak attributed to the
    stage the compile's progress lines ("... STAGE") had reached."""
    result = _measured([str(Path(sys.executable).parent / "nimbuild"), "-v", "compile", str(recipe), "--out", str(out)])
    # each step's time and peak as -v prints them ("done STEP (12.3s, peak 4.56 GiB)"), a failed compile's too
    result["steps"] = [(m.group(1), float(m.group(2)), float(m.group(3))) for m in
                       (re.match(r"done (.+) \((\d+\.\d)s, peak (\d+\.\d+) GiB\)", line) for line in result.pop("lines"))
                       if m]
    return result


def _measured(command: list[str], env: dict | None = None, limit_gib: float | None = None) -> dict:
    """`command` in its own process, measured as _compile says; stopped (SIGKILL) if its resident set
    passes `limit_gib`, which the result then names as what stopped it."""
    import threading

    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    stopped = None
    stage, lines = ["start"], []

    def read() -> None:
        for line in child.stderr:
            lines.append(line)
            if line.startswith("... "):
                stage.append(line[4:].strip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peaks: dict[str, float] = {}
    while True:  # reaped here, not by Popen, so that wait4 gives the child's own peak
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        rss = memory_kib(child.pid)
        if rss is not None:
            peaks[stage[-1]] = max(peaks.get(stage[-1], 0.0), rss / 2**20)
            if limit_gib is not None and rss / 2**20 > limit_gib and stopped is None:
                stopped = f"stopped at {rss / 2**20:.1f} GiB resident (limit {limit_gib:g} GiB) during {stage[-1]}"
                child.kill()
        time.sleep(0.2)
    child.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    # what stopped it: the limit, else the first line that says FAILED or error (a gate's figures), else the last
    said = [ln.strip() for ln in lines if ln.strip()]
    error = stopped or next((ln for ln in said if "FAILED" in ln or ln.startswith("error")), said[-1] if said else "")
    return {"seconds": time.perf_counter() - start, "exit": child.returncode, "peak_rss_gib": usage.ru_maxrss / 2**20,
            "peak_rss_gib_by_stage": peaks, "error": error if child.returncode else "", "lines": lines}


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _make(kind: str, dest: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_scale_models.py"), kind, str(dest)], check=True,
                   capture_output=True)
    return time.perf_counter() - start


def _served(kind: str, manifest: Path, work: Path) -> dict:
    """Start runtime_min on the profile and measure it; the runtime tree's peak RSS at the end."""
    from bench_runtime import _peak_rss_mib, _start_runtime, _stop

    from helpers.servers import free_port

    port = free_port()
    runtime, ready = _start_runtime(manifest, work / "cache", port, profile=_profile_name(kind))
    try:
        figures = {"qwen": _generation, "mist": _generation, "bert": _embeddings, "fast": _speech}[kind[:4]](kind, port, work)
        figures["start_s"] = ready
        figures["runtime_peak_rss_gib"] = _peak_rss_mib(runtime.pid) / 1024
    finally:
        _stop(runtime)
    return figures


def _profile_name(kind: str) -> str:
    if kind == SEVEN_B:
        return "onnxruntime-int4-throughput"
    return "onnxruntime-fp32-throughput-ofl" if kind.startswith("fast") else "onnxruntime-fp32-throughput"


def _generation(kind: str, port: int, work: Path) -> dict:
    from common import post

    body = json.dumps({"model": kind, "prompt": "A man is playing a guitar in the park while the rain falls",
                       "max_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()

    def one(_) -> tuple[float, float, int]:
        start = time.perf_counter()
        events = post("127.0.0.1", port, "/v1/completions", body, "application/json").split(b"\n\n")
        usage = [json.loads(e[6:]) for e in events if e.startswith(b"data: {")][-1]["usage"]
        return start, time.perf_counter(), usage["completion_tokens"]

    figures = {}
    rounds = 1 if kind == SEVEN_B else 3  # a 7B decodes a few tokens a second on two cores
    for concurrency in (1, 4):
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(concurrency)))  # warm
            start = time.perf_counter()
            results = list(pool.map(one, range(rounds * concurrency)))
            wall = time.perf_counter() - start
        assert {n for _, _, n in results} == {NEW_TOKENS}, "the runtime stopped early"
        figures[f"tokens/s, {concurrency} concurrent"] = sum(n for _, _, n in results) / wall
        figures[f"request s p50, {concurrency} concurrent"] = statistics.median(b - a for a, b, _ in results)
    return figures


def _embeddings(kind: str, port: int, work: Path) -> dict:
    from bench_runtime import SENTENCES, _drive

    from common import post_json

    embed = lambda text: post_json("127.0.0.1", port, "/v1/embeddings", {"model": kind, "input": text})
    dimensions = len(embed(SENTENCES[0])["data"][0]["embedding"])
    assert dimensions == 1024, f"{dimensions}-dimensional embeddings from a BERT-large shape"
    return {f"embeddings/s, {c} concurrent": _drive(embed, c, 5.0)[0] for c in (1, 8)}


def _speech(kind: str, port: int, work: Path) -> dict:
    from bench_asr import _clips

    from common import multipart, post

    (work / "clips").mkdir(exist_ok=True)
    clips = _clips(work / "clips")
    bodies = [multipart({"model": kind}, "file", c.path.name, c.path.read_bytes(), "audio/wav") for c in clips]
    transcribe = lambda body: post("127.0.0.1", port, "/v1/audio/transcriptions", *body)
    figures, seconds = {}, sum(c.seconds for c in clips)
    for concurrency in (1, 8):
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(transcribe, bodies[:concurrency]))  # warm
            start = time.perf_counter()
            list(pool.map(transcribe, bodies))
            figures[f"RTFX, {concurrency} concurrent"] = seconds / (time.perf_counter() - start)
    return figures


def _one(kind: str, work: Path, serve: bool = True) -> dict:
    source = work / (f"{kind}.nemo" if kind.startswith("fast") else kind)
    made = _make(kind, source)
    recipe = work / f"{kind}.yaml"
    recipe.write_text(_recipe(kind, source))
    out = work / f"{kind}-out"
    compiled = _compile(recipe, out)
    result = {"checkpoint_gib": _size(source) / 2**30, "made_s": made, "compile": compiled}
    if compiled["exit"] == 0:
        result["profile_gib"] = _size(out / "profiles" / _profile_name(kind)) / 2**30
        if serve:
            result["served"] = _served(kind, out / "profiles.yaml", work)
    if kind == SEVEN_B:
        _clean(work, f"{kind}-out")  # the peers get the disk the compile's graphs took
        result["peers"] = _peers(source, work)
    return result


def _peers(source: Path, work: Path) -> dict:
    """onnxruntime-genai's builder (int4, CPU) and Optimum's export on the same checkpoint, each in its
    own process under PEER_LIMIT_GIB: wall time and peak RSS, or what stopped it."""
    genai = _measured([sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", str(source), "-o",
                       str(work / "genai-int4"), "-p", "int4", "-e", "cpu", "-c", str(work / "genai-cache")],
                      env={**os.environ, "PYTHONPATH": str(ORTGENAI_BUILDER)}, limit_gib=PEER_LIMIT_GIB)
    genai.pop("lines")
    if genai["exit"] == 0:
        genai["output_gib"] = _size(work / "genai-int4") / 2**30
    subprocess.run(["rm", "-rf", str(work / "genai-int4"), str(work / "genai-cache")], check=False)
    optimum = _measured([str(OPTIMUM / "bin" / "optimum-cli"), "export", "onnx", "--model", str(source), "--task",
                         "text-generation-with-past", str(work / "optimum")], limit_gib=PEER_LIMIT_GIB)
    optimum.pop("lines")
    if optimum["exit"] == 0:
        optimum["output_gib"] = _size(work / "optimum") / 2**30
    subprocess.run(["rm", "-rf", str(work / "optimum")], check=False)
    return {"onnxruntime-genai builder (int4)": genai, "optimum-cli export onnx": optimum}


def main() -> tuple[str, dict]:
    (work := Path(tempfile.mkdtemp(prefix="nimbuild-bench-scale-"))).mkdir(exist_ok=True)
    os.environ.update(NIMBUILD_ORT_THREADS=str(THREADS), NIM_CACHE_PATH=str(work / "cache"))
    sys.path[:0] = [str(p) for p in sorted((REPO / "examples").iterdir())]  # the examples' scripts
    models = list(MODELS) + ([LARGEST] if os.environ.get("NIMBUILD_SCALE_LARGEST") == "1" else [])
    models += [SEVEN_B] if os.environ.get("NIMBUILD_SCALE_7B") == "1" else []
    if os.environ.get("NIMBUILD_SCALE_MODELS"):  # a subset, by name
        models = os.environ["NIMBUILD_SCALE_MODELS"].split(",")
    results = {}
    try:
        for kind in models:
            results[kind] = _one(kind, work, serve=kind != LARGEST)
            _clean(work, kind)
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    rows, served, stages, peers = [], [], [], []
    for kind, r in results.items():
        stages += [[kind, step, f"{seconds:.0f}", f"{gib:.2f}", f"{gib / r['checkpoint_gib']:.2f}x"]
                   for step, seconds, gib in r["compile"]["steps"]]
        for peer, p in (r.get("peers") or {}).items():
            peers.append([kind, peer, f"{p['seconds']:.0f}", f"{p['peak_rss_gib']:.1f}",
                          f"{p['peak_rss_gib'] / r['checkpoint_gib']:.2f}x",
                          f"{p['output_gib']:.2f}" if "output_gib" in p else f"failed: {p['error'][:160]}"])
        c = r["compile"]
        rows.append([kind, f"{r['checkpoint_gib']:.2f}", f"{c['seconds']:.0f}", f"{c['peak_rss_gib']:.1f}",
                     f"{c['peak_rss_gib'] / r['checkpoint_gib']:.1f}x",
                     f"{r['profile_gib']:.2f}" if "profile_gib" in r else f"failed: {c['error']}"])
        for name, value in (r.get("served") or {}).items():
            served.append([kind, name, f"{value:.3g}"])
    text = "\n\n".join([
        table(f"Compiling real-size checkpoints (generic fp32 profile, the 7B's int4; {os.cpu_count()} CPUs)",
              ["model", "checkpoint GiB", "compile s", "peak RSS GiB", "peak / checkpoint", "profile GiB"], rows),
        table("Where the compile's memory goes (each step's time and peak resident GiB, as `compile -v` prints them)",
              ["model", "step", "s", "peak GiB", "peak / checkpoint"], stages),
        table(f"Serving them (runtime_min, {THREADS} ORT threads)", ["model", "figure", "value"], served),
        *([table(f"The peers on the same checkpoint (each stopped past {PEER_LIMIT_GIB:g} GiB resident)",
                 ["model", "peer", "wall s", "peak RSS GiB", "peak / checkpoint", "output GiB"], peers)] if peers else []),
    ])
    return text, results


def _clean(work: Path, kind: str) -> None:
    """A model's files go once it is measured: the next one's peak must not share the disk cache."""
    for path in work.glob(f"{kind}*"):
        subprocess.run(["rm", "-rf", str(path)], check=False)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "tests"))
    print(main()[0])
