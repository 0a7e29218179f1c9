"""Text to speech on the tts-digits example: real-time factor (seconds of audio made per second of
wall time) and time to the first audio chunk of Riva's SynthesizeOnline (nvidia-riva-client, gRPC),
for 1 and 8 concurrent streams, against the same work in-process: NeMo's generate_spectrogram on the
same checkpoint, sentence by sentence, and the same Griffin-Lim (nimbuild/serving/griffin_lim.py), on the
same thread count.

Each request is two held-out sentences (none in the voice's training text); audio is at the voice's
own 22.05 kHz on both sides (no resampling). Time to first audio is request start to the first
response (the first sentence's audio) on the served side, and to the first sentence's audio on the
in-process side.
"""

from __future__ import annotations

import concurrent.futures
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import compile_recipe, p, table

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(p) for p in sorted((REPO / "examples").iterdir())]  # the examples' scripts
THREADS = 2
REQUESTS = 24
ROUNDS = 3
RATE = 22050


def _texts() -> list[str]:
    from make_tts_digits import held_out_sentences

    sentences = held_out_sentences(2 * REQUESTS)
    return [f"{a}. {b}." for a, b in zip(sentences[::2], sentences[1::2])]


def _stream(address: str, text: str) -> tuple[float, float, float]:
    """(seconds to the first chunk, seconds in all, seconds of audio) for one SynthesizeOnline."""
    import riva.client

    tts = riva.client.SpeechSynthesisService(riva.client.Auth(uri=address))
    start, first, samples = time.perf_counter(), None, 0
    for response in tts.synthesize_online(text, sample_rate_hz=RATE):
        first = first or time.perf_counter() - start
        samples += len(response.audio) // 2
    return first, time.perf_counter() - start, samples / RATE


def _load(address: str, texts: list[str], concurrency: int) -> dict:
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        start = time.perf_counter()
        runs = list(pool.map(lambda t: _stream(address, t), texts))
        wall = time.perf_counter() - start
    return {"rtf": sum(r[2] for r in runs) / wall, "first": [r[0] for r in runs]}


LOCAL_CHILD = """
import sys, time
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
from nimbuild.export.asr import quiet, restore
from nimbuild.serving.griffin_lim import GriffinLim
from nimbuild.sources.nemo import resolve_nemo
from nimbuild.serving.tts_text import sentences
torch.set_num_threads(int(sys.argv[2]))
model = restore(resolve_nemo(sys.argv[3], sys.argv[1]), "tts")
f = model.preprocessor.featurizer
vocoder = GriffinLim(f.fb[0].numpy(), int(f.n_fft), int(f.hop_length), float(f.log_zero_guard_value))
alphabet, texts = set(model.cfg.labels), sys.argv[4:]
def speak(text):
    firsts, samples, start = None, 0, time.perf_counter()
    for sentence in sentences(text, alphabet, 256):
        with torch.inference_mode():
            mel = model.generate_spectrogram(tokens=model.parse(sentence))[0].numpy()
        samples += len(vocoder(mel))
        firsts = firsts or time.perf_counter() - start
    return firsts, samples
with quiet():
    speak(texts[0])
print("ready", flush=True)
for line in sys.stdin:
    start, firsts, samples = time.perf_counter(), [], 0
    for text in texts:
        first, n = speak(text)
        firsts.append(first)
        samples += n
    print(samples / 22050 / (time.perf_counter() - start), *firsts, flush=True)
"""


class _InProcess:
    """NeMo and Griffin-Lim in a process of their own, run on request between the served rounds."""

    def __init__(self, texts: list[str]):
        args = [str(REPO), str(THREADS), str(REPO / "examples" / "tts-digits" / "tts-digits.nemo"), *texts]
        self.child = subprocess.Popen([sys.executable, "-c", LOCAL_CHILD, *args], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
        if self.child.stdout.readline().strip() != "ready":
            raise RuntimeError("NeMo did not load the checkpoint")

    def run(self) -> dict:
        self.child.stdin.write("go\n")
        self.child.stdin.flush()
        rtf, *firsts = map(float, self.child.stdout.readline().split())
        return {"rtf": rtf, "first": firsts}

    def close(self) -> None:
        self.child.stdin.close()
        self.child.wait(timeout=30)


def main() -> tuple[str, dict]:
    """Each round runs the served path at 1 and 8 streams and the in-process path one after the
    other, so the machine's swings hit both sides alike; medians over the rounds."""
    from demo_embed import running

    from helpers.servers import free_port

    texts = _texts()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        compile_recipe(REPO / "examples" / "tts-digits" / "recipe.yaml", out, "--target", "0")
        os.environ.update(NIM_CACHE_PATH=str(Path(tmp) / "cache"), NIMBUILD_ORT_THREADS=str(THREADS))
        grpc_port = free_port()
        local = _InProcess(texts)
        served, inproc = {1: [], 8: []}, []
        with running(str(out / "profiles.yaml"), free_port(), NIM_GRPC_API_PORT=str(grpc_port)) as url:
            if url is None:
                raise RuntimeError("runtime_min did not start")
            address = f"127.0.0.1:{grpc_port}"
            _load(address, texts[:2], 1)  # warm-up
            for _ in range(ROUNDS):
                for concurrency in (1, 8):
                    served[concurrency].append(_load(address, texts, concurrency))
                inproc.append(local.run())
        local.close()
    rows, data = [], {"served": {}, "in_process": {}, "ratio_rtf_over_in_process": {}}
    local_rtf = statistics.median(r["rtf"] for r in inproc)
    local_first = [x for r in inproc for x in r["first"]]
    for concurrency, runs in served.items():
        rtf = statistics.median(r["rtf"] for r in runs)
        firsts = [x for r in runs for x in r["first"]]
        ratio = statistics.median(s["rtf"] / n["rtf"] for s, n in zip(runs, inproc))
        rows.append(["runtime_min SynthesizeOnline", str(concurrency), f"{rtf:.2f}", f"{ratio:.2f}x",
                     f"{p(firsts, 0.5):.0f}", f"{p(firsts, 0.9):.0f}", f"{p(firsts, 0.99):.0f}"])
        data["served"][f"c={concurrency}"] = {"rtf": rtf, "first_chunk_ms_p50": p(firsts, 0.5),
                                              "first_chunk_ms_p90": p(firsts, 0.9)}
        data["ratio_rtf_over_in_process"][concurrency] = ratio
    rows.append(["NeMo generate_spectrogram + Griffin-Lim in-process", "1", f"{local_rtf:.2f}", "1.00x",
                 f"{p(local_first, 0.5):.0f}", f"{p(local_first, 0.9):.0f}", f"{p(local_first, 0.99):.0f}"])
    data["in_process"] = {"rtf": local_rtf, "first_chunk_ms_p50": p(local_first, 0.5)}
    text = table("tts-digits synthesis (RTF = audio seconds made per wall second; first = time to first audio)",
                 ["path", "concurrency", "RTF", "vs in-process", "first p50 ms", "p90 ms", "p99 ms"], rows) + \
        f"\n({REQUESTS} requests of two held-out sentences, {ROUNDS} rounds, served and in-process alternating; " \
        f"{THREADS} threads each side; 22.05 kHz audio, no resampling)"
    return text, data


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "tests"))
    print(main()[0])
