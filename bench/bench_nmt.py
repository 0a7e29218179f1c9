"""Translation on the nmt-en-de example: translations per second through Riva's TranslateText
(nvidia-riva-client, gRPC, one text per request) at 1 and 8 concurrent clients, against the same
work in-process: transformers' MarianMTModel.generate (greedy) on the same checkpoint and texts,
one text at a time (beside 1 client) and as padded batches of 8 (beside 8 clients, which Triton's
dynamic batcher gathers into batches of up to 8), on the same thread count.

Both sides translate the same held-out number phrases (never trained on) greedily to the end
token, and the benchmark checks both made the same translations, so neither does less work.
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

from common import compile_recipe, table

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(p) for p in sorted((REPO / "examples").iterdir())]  # the examples' scripts
THREADS = 2
TEXTS = 96
ROUNDS = 3

LOCAL_CHILD = """
import sys, time, warnings
warnings.simplefilter("ignore")
import torch
from transformers import MarianMTModel, MarianTokenizer
from transformers.utils import logging
logging.set_verbosity_error()
torch.set_num_threads(int(sys.argv[1]))
tokenizer = MarianTokenizer.from_pretrained(sys.argv[2])
model = MarianMTModel.from_pretrained(sys.argv[2]).eval()
texts = sys.argv[3:]
def translate(batch):
    inputs = tokenizer(batch, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, num_beams=1, do_sample=False, max_new_tokens=48,
                             bad_words_ids=[[tokenizer.pad_token_id]])
    return tokenizer.batch_decode(out, skip_special_tokens=True)
translate(texts[:8])
print("ready", flush=True)
for line in sys.stdin:
    size = int(line)
    start, got = time.perf_counter(), []
    for i in range(0, len(texts), size):
        got += translate(texts[i:i + size])
    print(len(texts) / (time.perf_counter() - start), "\\t".join(got), sep="\\t", flush=True)
"""


class _InProcess:
    """transformers in a process of its own, run on request between the served rounds."""

    def __init__(self, texts: list[str]):
        args = [str(THREADS), str(REPO / "examples" / "nmt-en-de" / "model"), *texts]
        self.child = subprocess.Popen([sys.executable, "-c", LOCAL_CHILD, *args], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
        if self.child.stdout.readline().strip() != "ready":
            raise RuntimeError("transformers did not load the checkpoint")

    def run(self, batch: int) -> tuple[float, list[str]]:
        self.child.stdin.write(f"{batch}\n")
        self.child.stdin.flush()
        rate, *got = self.child.stdout.readline().rstrip("\n").split("\t")
        return float(rate), got

    def close(self) -> None:
        self.child.stdin.close()
        self.child.wait(timeout=30)


def _served(address: str, texts: list[str], concurrency: int) -> tuple[float, list[str]]:
    import riva.client

    clients = [riva.client.NeuralMachineTranslationClient(riva.client.Auth(uri=address)) for _ in range(concurrency)]

    def one(k: int) -> list[str]:
        client = clients[k % concurrency]
        return [t.text for t in client.translate([texts[k]], "", "en", "de").translations]

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        start = time.perf_counter()
        got = [t for texts_ in pool.map(one, range(len(texts))) for t in texts_]
        return len(texts) / (time.perf_counter() - start), got


def main() -> tuple[str, dict]:
    """Each round runs the served path at 1 and 8 clients and the in-process path at batch 1 and 8
    one after the other, so the machine's swings hit both sides alike; medians over the rounds."""
    from demo_embed import running
    from nmt_phrases import held_out_numbers

    from helpers.servers import free_port

    texts = [en for en, _ in held_out_numbers(TEXTS, seed=11)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        compile_recipe(REPO / "examples" / "nmt-en-de" / "recipe.yaml", out, "--target", "0")
        os.environ.update(NIM_CACHE_PATH=str(Path(tmp) / "cache"), NIMBUILD_ORT_THREADS=str(THREADS))
        grpc_port = free_port()
        local = _InProcess(texts)
        served, inproc = {1: [], 8: []}, {1: [], 8: []}
        with running(str(out / "profiles.yaml"), free_port(), NIM_GRPC_API_PORT=str(grpc_port)) as url:
            if url is None:
                raise RuntimeError("runtime_min did not start")
            address = f"127.0.0.1:{grpc_port}"
            _served(address, texts[:8], 1)  # warm-up
            for _ in range(ROUNDS):
                for concurrency in (1, 8):
                    rate, got = _served(address, texts, concurrency)
                    local_rate, local_got = local.run(concurrency)
                    if got != local_got:
                        raise RuntimeError("the served and in-process translations differ: not the same work")
                    served[concurrency].append(rate)
                    inproc[concurrency].append(local_rate)
        local.close()
    rows, data = [], {"served": {}, "in_process": {}, "ratio": {}}
    for concurrency in (1, 8):
        rate, local_rate = statistics.median(served[concurrency]), statistics.median(inproc[concurrency])
        ratio = statistics.median(s / n for s, n in zip(served[concurrency], inproc[concurrency]))
        rows.append([f"runtime_min TranslateText, {concurrency} client(s)", f"{rate:.1f}", f"{ratio:.2f}x"])
        rows.append([f"transformers generate in-process, batch {concurrency}", f"{local_rate:.1f}", "1.00x"])
        data["served"][f"c={concurrency}"] = rate
        data["in_process"][f"batch={concurrency}"] = local_rate
        data["ratio"][concurrency] = ratio
    text = table("nmt-en-de translation (greedy; translations per second)",
                 ["path", "translations/s", "vs in-process"], rows) + \
        f"\n({TEXTS} held-out number phrases a round, one per request; {ROUNDS} rounds, served and in-process " \
        f"alternating; the same translations checked on both sides; {THREADS} threads each side)"
    return text, data


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "tests"))
    print(main()[0])
