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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from common import p, table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
THREADS = 2
CLIPS = 32
ROUNDS = 2


def _clips(root: Path) -> list[tuple[Path, float]]:
    import soundfile

    sys.path.insert(0, str(REPO / "scripts"))
    import make_asr_digits as trainer

    rng = random.Random(99)
    out = []
    for i in range(CLIPS):
        path = root / f"{i}.wav"
        voice = rng.choice(trainer.HELD_OUT_VOICES) + rng.choice(trainer.HELD_OUT_VARIANTS)
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(rng.choice(trainer.HELD_OUT_SPEEDS)), "-w", str(path),
                        trainer.sentence(rng)], check=True, capture_output=True)
        out.append((path, soundfile.info(str(path)).duration))
    return out


def _offline(url: str, path: Path) -> float:
    start = time.perf_counter()
    with open(path, "rb") as f:
        r = httpx.post(f"{url}/v1/audio/transcriptions", files={"file": (path.name, f, "audio/wav")},
                       data={"model": "asr-digits"}, timeout=120)
    r.raise_for_status()
    return time.perf_counter() - start


def _streaming(url: str, path: Path) -> float:
    import soundfile

    audio, rate = soundfile.read(str(path), dtype="int16")
    pcm, step = audio.tobytes(), rate // 10 * 2
    start = time.perf_counter()
    with httpx.stream("POST", f"{url}/v1/audio/transcriptions/stream?sample_rate={rate}",
                      content=(pcm[i:i + step] for i in range(0, len(pcm), step)), timeout=120) as r:
        r.raise_for_status()
        final = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")][-1]
    assert final.get("is_final"), final
    return time.perf_counter() - start


def _load(fn, url: str, clips, concurrency: int) -> dict:
    latencies, audio, wall = [], 0.0, 0.0
    work = [c for _ in range(ROUNDS) for c in clips]
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        start = time.perf_counter()
        latencies = list(pool.map(lambda c: fn(url, c[0]), work))
        wall = time.perf_counter() - start
    audio = sum(d for _, d in work)
    return {"rtfx": audio / wall, "p50": p(latencies, 0.5), "p90": p(latencies, 0.9), "p99": p(latencies, 0.99)}


def _nemo(clips, batch: int) -> dict:
    import torch

    from nimbuild.export.asr import quiet, restore
    from nimbuild.sources.nemo import resolve_nemo

    torch.set_num_threads(THREADS)
    model = restore(resolve_nemo(str(REPO / "recipes" / "models" / "asr-digits.nemo"), REPO))
    paths = [str(c[0]) for c in clips]
    with quiet():
        model.transcribe(paths[:4], batch_size=batch, verbose=False)  # warm-up
        start = time.perf_counter()
        for _ in range(ROUNDS):
            model.transcribe(paths, batch_size=batch, verbose=False)
        wall = time.perf_counter() - start
    return {"rtfx": ROUNDS * sum(d for _, d in clips) / wall}


def main() -> str:
    from demo_embed import running
    from nimbuild.cli import main as cli
    from servers import free_port

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        try:
            cli(["-q", "compile", str(REPO / "recipes" / "asr-digits.yaml"), "--out", str(out),
                 "--target", "0"], standalone_mode=False)
        except SystemExit:
            pass
        clips = _clips(Path(tmp))
        os.environ.update(NIM_CACHE_PATH=str(Path(tmp) / "cache"), NIMBUILD_ORT_THREADS=str(THREADS),
                          NIM_TAGS_SELECTOR="mode=str")
        rows, served = [], {}
        with running(str(out / "profiles.yaml"), free_port()) as url:
            _load(_offline, url, clips[:4], 1)  # warm-up
            for name, fn in (("offline (POST file)", _offline), ("streaming (100 ms pieces)", _streaming)):
                for concurrency in (1, 16):
                    r = _load(fn, url, clips, concurrency)
                    served[(name, concurrency)] = r
                    rows.append([f"runtime_min {name}", str(concurrency), f"{r['rtfx']:.1f}", f"{r['p50']:.0f}",
                                 f"{r['p90']:.0f}", f"{r['p99']:.0f}"])
        for batch in (1, 16):
            local = _nemo(clips, batch)
            rows.append([f"NeMo transcribe() in-process, batch {batch}", str(batch), f"{local['rtfx']:.1f}", "-", "-", "-"])
            ratio = served[("offline (POST file)", batch)]["rtfx"] / local["rtfx"]
            rows.append(["  ratio runtime offline / NeMo", str(batch), f"{ratio:.2f}x", "", "", ""])
    seconds = sum(d for _, d in clips)
    return table("asr-digits transcription (RTFX = audio seconds per wall second)",
                 ["path", "concurrency", "RTFX", "p50 ms", "p90 ms", "p99 ms"], rows) + \
        f"\n({CLIPS} espeak-ng clips, {seconds:.0f} s of audio, x{ROUNDS} rounds; {THREADS} threads each side)"


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "tests"))
    print(main())
