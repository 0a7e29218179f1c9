"""Speech clients: the HTTP transcription route, and Riva's ASR client (nvidia-riva-client)."""

from __future__ import annotations

from pathlib import Path

import httpx
import riva.client


def transcribe(url: str, path: Path, model: str = "asr-digits", **fields) -> httpx.Response:
    with open(path, "rb") as f:
        return httpx.post(f"{url}/v1/audio/transcriptions", files={"file": (path.name, f, "audio/wav")},
                          data={"model": model, **fields}, timeout=60)



def riva_asr(runtime):
    """Riva's ASR client on the runtime's gRPC port."""
    return riva.client.ASRService(riva.client.Auth(uri=f"127.0.0.1:{runtime.grpc_port}"))
