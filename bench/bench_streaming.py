"""Streaming ASR the way the Kaldi-on-Triton work measured it, through Riva's gRPC API (the path
Speech NIM clients take) on the asr-digits example:

- N concurrent streams, each paced in real time (100 ms of audio per message, sent when it would
  have been captured), with interim results on; latency from the last message sent to the final
  transcript received (p50/p90/p95/p99), RTFX (audio seconds streamed per wall second, all streams
  together), and the largest N whose p99 stays under 1 s;
- per-chunk latency for one 10 s and one 60 s stream (the time from the message that completes a
  chunk to its interim result), early and late in the stream: flat, not growing with its length.

Streams are espeak-ng digit sentences (held-out voices) joined to 10 s; 16 kHz 16-bit PCM.
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from common import compile_recipe, p, table

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(p) for p in sorted((REPO / "examples").iterdir())]  # demo_embed.running: the runtime as make demo starts it
RATE, PIECE_MS = 16000, 100
LEVELS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96)


def _speech(root: Path, seconds: float, seed: int) -> np.ndarray:
    """espeak-ng sentences at 16 kHz, joined with 300 ms pauses, cut to `seconds`."""
    sys.path[:0] = [str(p) for p in sorted((REPO / "examples").iterdir())]  # the examples' scripts
    import make_asr_digits as trainer

    from nimbuild.serving.audio import read_audio

    rng, parts, total = random.Random(seed), [], 0
    while total < seconds * RATE:
        path = root / f"s{seed}-{len(parts)}.wav"
        voice = rng.choice(trainer.HELD_OUT_VOICES) + rng.choice(trainer.HELD_OUT_VARIANTS)
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(rng.choice(trainer.HELD_OUT_SPEEDS)), "-w", str(path),
                        trainer.sentence(rng)], check=True, capture_output=True)
        audio = read_audio(path.read_bytes(), RATE)
        parts += [audio, np.zeros(RATE * 3 // 10, np.float32)]
        total += len(audio) + RATE * 3 // 10
    return (np.clip(np.concatenate(parts)[: int(seconds * RATE)], -1, 1) * 32767).astype("<i2")


def _stream(address: str, pcm: np.ndarray, paced: bool = True) -> dict:
    """One paced stream: final latency after the last message, and per-chunk interim latencies."""
    import riva.client

    service = riva.client.ASRService(riva.client.Auth(uri=address))
    config = riva.client.StreamingRecognitionConfig(config=riva.client.RecognitionConfig(
        encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=RATE, language_code="en-US"),
        interim_results=True)
    step = RATE * PIECE_MS // 1000
    sent: list[tuple[float, float]] = []  # (audio seconds sent so far, when)
    lock = threading.Lock()

    def pieces():
        start = time.perf_counter()
        for i in range(0, len(pcm), step):
            if paced:  # sent when it would have been captured
                time.sleep(max(0.0, start + i / RATE - time.perf_counter()))
            with lock:
                sent.append((min(len(pcm), i + step) / RATE, time.perf_counter()))
            yield pcm[i:i + step].tobytes()

    chunks, final = [], None
    for response in service.streaming_response_generator(pieces(), config):
        now = time.perf_counter()
        for result in response.results:
            with lock:
                # the message that brought the audio this result covers
                when = next((t for s, t in sent if s >= result.audio_processed - 1e-6), sent[-1][1])
            if result.is_final:
                final = (now - sent[-1][1], result.alternatives[0].transcript)
            else:
                chunks.append((result.audio_processed, now - when))
    return {"final_ms": final[0] * 1000, "text": final[1], "chunks": chunks, "seconds": len(pcm) / RATE}


def _level(address: str, streams: list[np.ndarray], n: int) -> dict:
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda s: _stream(address, s), streams[:n]))
    wall = time.perf_counter() - start
    finals = [r["final_ms"] / 1000 for r in results]
    return {"n": n, "p50": p(finals, 0.5), "p90": p(finals, 0.9), "p95": p(finals, 0.95), "p99": p(finals, 0.99),
            "rtfx": sum(r["seconds"] for r in results) / wall}


def _measure(address: str, streams: list[np.ndarray], long: np.ndarray):
    _stream(address, streams[0][: RATE * 2], paced=False)  # warm-up
    rows, sustained = [], 0
    for n in LEVELS:
        r = _level(address, streams, n)
        rows.append([n, r["p50"], r["p90"], r["p95"], r["p99"], r["rtfx"]])
        if r["p99"] >= 1000:
            break
        sustained = n
    return rows, sustained, [_stream(address, pcm) for pcm in (streams[0], long)]


def main() -> tuple[str, dict]:
    from demo_embed import running

    from helpers.servers import free_port

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        compile_recipe(REPO / "examples" / "asr-digits" / "recipe.yaml", out, "--target", "0")
        streams = [_speech(Path(tmp), 10.0, seed) for seed in range(max(LEVELS))]
        long = _speech(Path(tmp), 60.0, 1000)
        grpc_port = free_port()
        saved = dict(os.environ)  # the runtime's settings must not leak into the next benchmark
        os.environ.update(NIM_CACHE_PATH=str(Path(tmp) / "cache"), NIMBUILD_ORT_THREADS="2",
                          NIM_TAGS_SELECTOR="mode=str", NIM_GRPC_API_PORT=str(grpc_port))
        try:
            with running(str(out / "profiles.yaml"), free_port()) as url:
                if url is None:
                    raise RuntimeError("runtime_min did not start")
                rows, sustained, per_chunk = _measure(f"127.0.0.1:{grpc_port}", streams, long)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    load = table(f"asr-digits streaming over Riva gRPC, {PIECE_MS} ms messages paced in real time, 10 s streams: "
                 "final-transcript latency after the last message (ms)",
                 ["streams", "p50", "p90", "p95", "p99", "RTFX"], rows)
    lines = []
    for r in per_chunk:
        chunks = r["chunks"]
        first = [ms for t, ms in chunks if t <= 5]
        last = [ms for t, ms in chunks if t > r["seconds"] - 5]
        lines.append([f"{r['seconds']:.0f} s stream", len(chunks), statistics.median(first) * 1000,
                      statistics.median(last) * 1000, max(ms for _, ms in chunks) * 1000, r["final_ms"]])
    flat = table("per-chunk latency, one paced stream (ms): interim result after the message completing its chunk",
                 ["stream", "chunks", "median, first 5 s", "median, last 5 s", "max", "final"], lines)
    levels = [dict(zip(["streams", "p50", "p90", "p95", "p99", "rtfx"], row)) for row in rows]
    return f"{load}\nlargest N with p99 under 1 s: {sustained}\n\n{flat}", {"levels": levels, "sustained": sustained}


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "tests"))
    print(main()[0])
