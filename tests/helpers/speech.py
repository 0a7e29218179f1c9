"""Speech clients: the HTTP transcription route, and Riva's ASR client (nvidia-riva-client)."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import httpx
import numpy as np
import riva.client

RATE = 16000


def seeded_clip(seed: int, seconds: float) -> np.ndarray:
    """Seeded 16 kHz sound: voiced harmonics with a moving pitch, then noise (as the speech exporters' parity sound)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    phase = 2 * np.pi * np.cumsum(120 + 50 * np.sin(2 * np.pi * (0.5 + seed / 7) * t)) / RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 10)) * (t < seconds * 0.6)
    return (0.2 * voiced + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def wav_bytes(audio: np.ndarray) -> bytes:
    """A clip as a 16-bit mono WAV file."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(RATE)
        out.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def as_served(audio: np.ndarray) -> np.ndarray:
    """The clip as the server reads it back from 16-bit PCM."""
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").astype(np.float32) / 32768.0


def transcribe(url: str, path: Path, model: str = "asr-digits", **fields) -> httpx.Response:
    with open(path, "rb") as f:
        return httpx.post(f"{url}/v1/audio/transcriptions", files={"file": (path.name, f, "audio/wav")},
                          data={"model": model, **fields}, timeout=60)



def riva_asr(runtime):
    """Riva's ASR client on the runtime's gRPC port."""
    return riva.client.ASRService(riva.client.Auth(uri=f"127.0.0.1:{runtime.grpc_port}"))
