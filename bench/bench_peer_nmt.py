"""Translation against CTranslate2, the engine a user would pick instead for Marian models, side by
side in one run on the nmt-en-de checkpoint: runtime_min's TranslateText (Riva's gRPC, one text
per request from 1 and 8 clients) against CTranslate2 in process (one text per call, and batches
of 8), and, to say where the difference lies, two sides between them: Triton's own gRPC API called
directly with tritonclient on the model runtime_min deployed (source tokens in, as runtime_min
sends them: what runtime_min's API front end adds above Triton), and runtime_min's greedy loop
(nimbuild.serving.seq2seq) on the profile's graphs in this process (what Triton and its Python backend add
above the loop). perf_analyzer, which would be the standard client for the Triton side, does not
run here (its binary needs glibc 2.38; Debian 12 has 2.36).

The same work is checked, not assumed: greedy on every side, the same source pieces (the
checkpoint's SentencePiece model, ending with </s>), the decoder started from the checkpoint's
start token (bench/peers/ctranslate2_convert.py says why the stock converter does not), the same
thread count, and every side's 96 translations compared; a difference is counted and fails the
bench, since a faster wrong translation is not a result."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_nmt import ROUNDS, TEXTS, THREADS, _served

from common import CT2_CONVERTER, compile_recipe, run_peer, table, triton_grpc_address

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "examples" / "nmt-en-de" / "model"
MAX_TOKENS = 48  # the profile's longest translation (the recipe's decoder sequence)
SIZES = (1, 8)


def _budget(ids: list[int], runtime: dict) -> int:
    """The token budget runtime_min's TranslateText gives a text when max_len_variation is unset
    (Translator.budget's default over its source's tokens, within the profile's longest output)."""
    from runtime_min.tasks.translation.translate import DEFAULT_LENGTH_VARIATION

    return min(len(ids) + DEFAULT_LENGTH_VARIATION, int(runtime["max_output_tokens"]))


class _OwnLoop:
    """runtime_min's greedy decoding as its Triton model runs it (the profile's two graphs on
    onnxruntime, MarianText's pieces, Riva's default length budget), in this process."""

    def __init__(self, workspace: Path):
        from nimbuild.serving.seq2seq import TranslationGraphs, greedy_settings
        from nimbuild.serving.translation_text import MarianText
        from runtime_min.deploy.runners import OnnxRunner

        self.runtime = json.loads((workspace / "model_info.json").read_text())["runtime"]
        self.graphs = TranslationGraphs(OnnxRunner(workspace / "model.onnx").session,
                                        OnnxRunner(workspace / self.runtime["decoder"]).session)
        self.settings = greedy_settings(self.runtime)
        self.text = MarianText(workspace / "tokenizer")

    def run(self, texts: list[str], size: int) -> tuple[float, list[str]]:
        from nimbuild.serving.seq2seq import greedy

        start, got = time.perf_counter(), []
        for i in range(0, len(texts), size):
            rows = [self.text.encode(t) for t in texts[i:i + size]]
            budgets = [_budget(r, self.runtime) for r in rows]
            got += [self.text.decode(out) for out in greedy(self.graphs, rows, budgets, **self.settings)]
        return len(texts) / (time.perf_counter() - start), got


class _TritonDirect:
    """tritonclient's gRPC client on the Triton that runtime_min started (found by the repository
    under the runtime's NIM_WORKSPACE), sending what runtime_min's translate.output_ids sends."""

    def __init__(self, workspace_root: Path, profile_workspace: Path):
        import tritonclient.grpc as triton_grpc

        from nimbuild.serving.translation_text import MarianText

        self.address = triton_grpc_address(workspace_root)
        self.client = triton_grpc.InferenceServerClient(self.address)
        names = [m.name for m in self.client.get_model_repository_index().models]
        assert len(names) == 1, f"one model expected in the repository, found {names}"
        self.model = names[0]
        self.text = MarianText(profile_workspace / "tokenizer")
        self.runtime = json.loads((profile_workspace / "model_info.json").read_text())["runtime"]

    def run(self, texts: list[str], clients: int) -> tuple[float, list[str]]:
        import concurrent.futures

        import numpy as np
        import tritonclient.grpc as triton_grpc

        connections = [triton_grpc.InferenceServerClient(self.address) for _ in range(clients)]

        def one(k: int) -> str:
            ids = self.text.encode(texts[k])
            source = triton_grpc.InferInput("input_ids", [1, len(ids)], "INT64")
            source.set_data_from_numpy(np.asarray(ids, np.int64).reshape(1, -1))
            limit = triton_grpc.InferInput("max_tokens", [1, 1], "INT32")
            limit.set_data_from_numpy(np.array([[_budget(ids, self.runtime)]], np.int32))
            result = connections[k % clients].infer(self.model, [source, limit])
            return self.text.decode(result.as_numpy("output_ids").reshape(-1).tolist())

        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            start = time.perf_counter()
            got = list(pool.map(one, range(len(texts))))
            return len(texts) / (time.perf_counter() - start), got


def _converted(tmp: Path) -> Path:
    """The checkpoint in CTranslate2's format, by its converter (in this environment: it reads the
    checkpoint with transformers), ctranslate2 alone on the path."""
    out = tmp / "ct2"
    env = {**os.environ, "PYTHONPATH": str(CT2_CONVERTER)}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "peers" / "ctranslate2_convert.py"), str(CHECKPOINT),
                           str(out)], env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"CTranslate2's converter failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return out


def _workspace(out: Path) -> Path:
    from nimbuild.profiles.manifest import load_manifest

    profile = load_manifest(out / "profiles.yaml").profiles[0]
    return out / "profiles" / profile.description


def main() -> tuple[str, dict]:
    """Each round: the server at 1 and 8 clients, the own loop at 1 and 8, CTranslate2 at 1 and 8
    (a fresh process, its load not timed), so the machine's swings hit every side alike."""
    from demo_embed import running
    from nmt_phrases import held_out_numbers

    from helpers.servers import free_port

    texts = [en for en, _ in held_out_numbers(TEXTS, seed=11)]
    rates = {side: {n: [] for n in SIZES} for side in ("served", "triton", "own loop", "ctranslate2")}
    outputs: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        compile_recipe(REPO / "examples" / "nmt-en-de" / "recipe.yaml", out, "--target", "0")
        os.environ.update(NIM_CACHE_PATH=str(Path(tmp) / "cache"), NIM_WORKSPACE=str(Path(tmp) / "runtime"),
                          NIMBUILD_ORT_THREADS=str(THREADS))
        ct2, workspace = _converted(Path(tmp)), _workspace(out)
        own, grpc_port = _OwnLoop(workspace), free_port()
        with running(str(out / "profiles.yaml"), free_port(), NIM_GRPC_API_PORT=str(grpc_port)) as url:
            if url is None:
                raise RuntimeError("runtime_min did not start")
            address, triton = f"127.0.0.1:{grpc_port}", _TritonDirect(Path(tmp) / "runtime", workspace)
            _served(address, texts[:8], 1)  # warm-up
            own.run(texts[:8], 8)
            for _ in range(ROUNDS):
                peer = run_peer("ctranslate2_translate.py", ct2, CHECKPOINT / "source.spm", THREADS, 1, MAX_TOKENS,
                                *SIZES, stdin=json.dumps(texts))
                for n in SIZES:
                    for side, (rate, got) in (("served", _served(address, texts, n)), ("triton", triton.run(texts, n)),
                                              ("own loop", own.run(texts, n)),
                                              ("ctranslate2", (peer["per_s"][str(n)][0], peer["translations"][str(n)]))):
                        rates[side][n].append(rate)
                        outputs[f"{side}, {n}"] = got
    same = _same_work(outputs, peer)
    return _report(rates, same)


def _same_work(outputs: dict[str, list[str]], peer: dict) -> dict:
    reference = outputs["served, 1"]
    differ = {name: sum(a != b for a, b in zip(reference, got)) + abs(len(reference) - len(got))
              for name, got in outputs.items()}
    assert not any(differ.values()), f"translations differ from the served ones: {differ}"
    assert peer["threads"] == THREADS and peer["beam_size"] == 1 and peer["max_decoding_length"] == MAX_TOKENS
    return {"translations compared": f"{len(reference)} per side and size, all equal",
            "decoding": "greedy (CTranslate2 beam_size 1, <pad> suppressed as the profile bans it)",
            "source": "the checkpoint's SentencePiece pieces + </s> on every side",
            "threads": f"{THREADS} (onnxruntime intra-op; CTranslate2 1 translator x {THREADS} intra-op)",
            "ctranslate2": peer["version"]}


def _report(rates: dict, same: dict) -> tuple[str, dict]:
    median = {side: {n: statistics.median(v) for n, v in by.items()} for side, by in rates.items()}
    ratio = {n: statistics.median(s / p for s, p in zip(rates["served"][n], rates["ctranslate2"][n])) for n in SIZES}
    rows = []
    for n in SIZES:
        rows.append([f"runtime_min TranslateText, {n} client(s)", median["served"][n], f"{ratio[n]:.3f}x"])
        rows.append([f"Triton's gRPC directly (tritonclient), {n} client(s)", median["triton"][n],
                     f"{median['triton'][n] / median['ctranslate2'][n]:.3f}x"])
        rows.append([f"runtime_min's greedy loop in process, batch {n}", median["own loop"][n],
                     f"{median['own loop'][n] / median['ctranslate2'][n]:.3f}x"])
        rows.append([f"CTranslate2 in process, batch {n}", median["ctranslate2"][n], "1.000x"])
    text = "\n\n".join([
        table(f"nmt-en-de against CTranslate2 (greedy; translations/s; {TEXTS} held-out texts a round, "
              f"{ROUNDS} rounds, medians)", ["path", "translations/s", "vs CTranslate2"], rows),
        table("Same work, checked", ["check", "value"], [[k, v] for k, v in same.items()]),
    ])
    return text, {"per_s": {side: {str(n): v for n, v in by.items()} for side, by in median.items()},
                  "ratio_served_vs_ctranslate2": {str(n): r for n, r in ratio.items()}, "same_work": same}


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "tests"))
    print(main()[0])
