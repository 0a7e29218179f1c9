"""The text-to-speech end of `make demo`: serve the tts-digits voice and the asr-digits model, each
its own runtime_min, as Speech NIM runs its services; speak a sentence through Riva's
SynthesizeOnline with the official nvidia-riva-client (printing when each sentence's audio
arrives) and through TTS NIM's POST /v1/audio/synthesize (a WAV, kept in build/); then hear the
audio back with the served ASR model over Riva's Recognize, and print what it heard.

    python examples/tts-digits/demo_tts.py TTS_MANIFEST ASR_MANIFEST   (ports: NIM_HTTP_API_PORT, NIM_GRPC_API_PORT
                                                            for the voice, the next ones for the ASR)
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

EXAMPLES = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(EXAMPLES / "minilm-embed"), str(EXAMPLES / "asr-digits")]  # demo_embed.running, word_error_rate
from demo_embed import running  # noqa: E402
from make_asr_digits import word_error_rate  # noqa: E402

TEXT = "Dial 5551234. Cancel, repeat!"  # digits are read one by one: the voice's text normalisation
SPOKEN = "dial five five five one two three four cancel repeat"
WAV = Path("build/tts-demo.wav")


def main(tts_manifest: str, asr_manifest: str) -> int:
    import riva.client

    http, grpc = int(os.environ.get("NIM_HTTP_API_PORT", "8000")), int(os.environ.get("NIM_GRPC_API_PORT", "50051"))
    with ExitStack() as servers:
        tts_url = servers.enter_context(running(tts_manifest, http, NIM_GRPC_API_PORT=str(grpc)))
        asr_url = servers.enter_context(running(asr_manifest, http + 1, NIM_GRPC_API_PORT=str(grpc + 1)))
        if tts_url is None or asr_url is None:
            return 1
        voices = httpx.get(f"{tts_url}/v1/audio/list_voices").json()
        print(f"GET {tts_url}/v1/audio/list_voices -> {voices}")
        tts = riva.client.SpeechSynthesisService(riva.client.Auth(uri=f"127.0.0.1:{grpc}"))
        start, pcm = time.perf_counter(), b""
        for k, response in enumerate(tts.synthesize_online(TEXT, sample_rate_hz=16000)):
            pcm += response.audio
            print(f"  gRPC SynthesizeOnline sentence {k + 1}: {len(response.audio) / 32000:.2f} s of audio after "
                  f"{time.perf_counter() - start:.2f} s")
        reply = httpx.post(f"{tts_url}/v1/audio/synthesize", data={"text": TEXT, "sample_rate_hz": "16000"}, timeout=60)
        reply.raise_for_status()
        WAV.parent.mkdir(exist_ok=True)
        WAV.write_bytes(reply.content)
        print(f"POST {tts_url}/v1/audio/synthesize {TEXT!r} -> {WAV} ({len(reply.content)} bytes, audio/wav)")
        asr = riva.client.ASRService(riva.client.Auth(uri=f"127.0.0.1:{grpc + 1}"))
        config = riva.client.RecognitionConfig(encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=16000,
                                               language_code="en-US")
        result = asr.offline_recognize(pcm, config).results
        heard = result[0].alternatives[0].transcript.strip() if result else ""
        wer = word_error_rate([SPOKEN], [heard])
        print(f"the served asr-digits heard the served voice say {heard!r} (said {SPOKEN!r}; word error rate {wer:.0%})")
        return 0 if wer <= 0.34 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
