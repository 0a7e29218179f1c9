"""Speech on the asr-digits example: RTFX (seconds of audio transcribed per second of wall time) and
latency p50/p90/p99 through runtime_min, for 1 and 16 concurrent clients, offline (one WAV per
POST /v1/audio/transcriptions) and streaming (one PCM upload per stream, sent in 100 ms pieces as
fast as the server takes them, on the sequence-batched model), against NeMo's own transcribe()
in-process on the same files and thread count.

Latency is per request: upload start to transcript (offline) or to the final event (streaming).
The audio is espeak-ng speech (22.05 kHz, resampled by the server), 1-3 s per utterance.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from common import compile_recipe, http_client, p, table

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(p) for p in sorted((REPO / "examples").iterdir())]  # the examples' scripts
THREADS = 2
CLIPS = 32
ROUNDS = 3
PASSES = 4  # the clips sent this many times per measurement


class Clip(NamedTuple):
    path: Path
    seconds: float
    text: str  # what espeak-ng was asked to say


def _clips(root: Path) -> list[Clip]:
    """CLIPS held-out utterances (voices, variants and speeds the model was not trained on)."""
    import soundfile

    sys.path[:0] = [str(p) for p in sorted((REPO / "examples").iterdir())]  # the examples' scripts
    import make_asr_digits as trainer

    rng = random.Random(99)
    out = []
    for i in range(CLIPS):
        path = root / f"{i}.wav"
        voice = rng.choice(trainer.HELD_OUT_VOICES) + rng.choice(trainer.HELD_OUT_VARIANTS)
        speed = rng.choice(trainer.HELD_OUT_SPEEDS)
        text = trainer.sentence(rng)
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True,
                       capture_output=True)
        out.append(Clip(path, soundfile.info(str(path)).duration, text))
    return out


def _offline(url: str, path: Path) -> float:
    start = time.perf_counter()
    with open(path, "rb") as f:
        r = http_client().post(f"{url}/v1/audio/transcriptions", files={"file": (path.name, f, "audio/wav")},
                               data={"model": "asr-digits"})
    r.raise_for_status()
    return time.perf_counter() - start


def _streaming(url: str, path: Path) -> float:
    import soundfile

    audio, rate = soundfile.read(str(path), dtype="int16")
    pcm, step = audio.tobytes(), rate // 10 * 2
    start = time.perf_counter()
    with http_client().stream("POST", f"{url}/v1/audio/transcriptions/stream?sample_rate={rate}",
                              content=(pcm[i:i + step] for i in range(0, len(pcm), step))) as r:
        r.raise_for_status()
        final = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")][-1]
    assert final.get("is_final"), final
    return time.perf_counter() - start


def _load(fn, url: str, clips, concurrency: int) -> dict:
    work = list(clips) * PASSES  # long enough that the ramp-up and the last stragglers do not dominate
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        start = time.perf_counter()
        latencies = list(pool.map(lambda c: fn(url, c.path), work))
        wall = time.perf_counter() - start
    audio = sum(c.seconds for c in work)
    return {"rtfx": audio / wall, "latencies": latencies}


NEMO_CHILD = """
import sys, time
import torch
sys.path.insert(0, sys.argv[1])
from nimbuild.export.asr import quiet, restore
from nimbuild.sources.nemo import resolve_nemo
torch.set_num_threads(int(sys.argv[2]))
model = restore(resolve_nemo(sys.argv[3], sys.argv[1]))
seconds, passes, paths = float(sys.argv[4]), int(sys.argv[5]), sys.argv[6:]
with quiet():
    model.transcribe(paths[:4], batch_size=4, verbose=False)  # warm-up
print("ready", flush=True)
for line in sys.stdin:
    with quiet():  # NeMo's output silenced, the answer after it (quiet() takes stdout away)
        start = time.perf_counter()
        for _ in range(passes):
            model.transcribe(paths, batch_size=int(line), verbose=False)
        wall = time.perf_counter() - start
    print(passes * seconds / wall, flush=True)
"""


class _Nemo:
    """NeMo's own transcribe() on the same checkpoint and clips, in a process of its own (so that
    neither side's threads and memory sit in the other's process), run on request between the
    served rounds."""

    def __init__(self, clips):
        args = [str(REPO), str(THREADS), str(REPO / "examples" / "asr-digits" / "asr-digits.nemo"),
                str(sum(c.seconds for c in clips)), str(PASSES), *[str(c.path) for c in clips]]
        self.child = subprocess.Popen([sys.executable, "-c", NEMO_CHILD, *args], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
        if self.child.stdout.readline().strip() != "ready":
            raise RuntimeError("NeMo did not load the checkpoint")

    def run(self, batch: int) -> float:
        self.child.stdin.write(f"{batch}\n")
        self.child.stdin.flush()
        return float(self.child.stdout.readline())

    def close(self) -> None:
        self.child.stdin.close()
        self.child.wait(timeout=30)


def main() -> tuple[str, dict]:
    """Each round runs the served path and NeMo one after the other, so the machine's swings
    (2x between minutes here) hit both sides of a ratio alike; medians over the rounds."""
    from demo_embed import running

    from helpers.servers import free_port

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        compile_recipe(REPO / "examples" / "asr-digits" / "recipe.yaml", out, "--target", "0")
        clips = _clips(Path(tmp))
        os.environ.update(NIM_CACHE_PATH=str(Path(tmp) / "cache"), NIMBUILD_ORT_THREADS=str(THREADS),
                          NIM_TAGS_SELECTOR="mode=str")
        nemo = _Nemo(clips)
        kinds = (("offline (POST file)", _offline), ("streaming (100 ms pieces)", _streaming))
        served = {(k, c): [] for k, _ in kinds for c in (1, 16)}
        local = {1: [], 16: []}
        with running(str(out / "profiles.yaml"), free_port()) as url:
            _load(_offline, url, clips[:4], 1)  # warm-up
            for _ in range(ROUNDS):
                for concurrency in (1, 16):
                    for name, fn in kinds:
                        served[(name, concurrency)].append(_load(fn, url, clips, concurrency))
                    local[concurrency].append(nemo.run(concurrency))
        nemo.close()
    rows, data = [], {"served": {}, "nemo_rtfx": {}, "ratio_offline_over_nemo": {}}
    for (name, concurrency), runs in served.items():
        rtfx = statistics.median(r["rtfx"] for r in runs)
        latencies = [x for r in runs for x in r["latencies"]]
        rows.append([f"runtime_min {name}", str(concurrency), f"{rtfx:.1f}", f"{p(latencies, 0.5):.0f}",
                     f"{p(latencies, 0.9):.0f}", f"{p(latencies, 0.99):.0f}"])
        data["served"][f"{name} c={concurrency}"] = rtfx
    for batch in (1, 16):
        nemo_rtfx = statistics.median(local[batch])
        ratio = statistics.median(s["rtfx"] / n for s, n in zip(served[("offline (POST file)", batch)], local[batch]))
        rows.append([f"NeMo transcribe() in-process, batch {batch}", str(batch), f"{nemo_rtfx:.1f}", "-", "-", "-"])
        rows.append(["  ratio runtime offline / NeMo (median of rounds)", str(batch), f"{ratio:.2f}x", "", "", ""])
        data["nemo_rtfx"][batch], data["ratio_offline_over_nemo"][batch] = nemo_rtfx, ratio
    seconds = sum(c.seconds for c in clips)
    text = table("asr-digits transcription (RTFX = audio seconds per wall second)",
                 ["path", "concurrency", "RTFX", "p50 ms", "p90 ms", "p99 ms"], rows) + \
        f"\n({CLIPS} espeak-ng clips, {seconds:.0f} s of audio, {ROUNDS} rounds of {PASSES} passes, served and NeMo " \
        f"alternating; {THREADS} threads each side)"
    return text, data


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "tests"))
    print(main()[0])
