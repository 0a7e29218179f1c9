"""The speech-to-speech end of `make demo`, composed as Speech NIM's architecture composes it:
English audio -> ASR (asr-digits) -> translation (nmt-en-de) -> TTS (the German tts-digits-de
voice), each its own runtime_min over its own profile, this application passing the data between
them through the official nvidia-riva-client (Recognize, TranslateText, Synthesize).

What a machine can check is checked: the ASR stage's text and the translation's text against what
was said, and the TTS stage's reading of the German (Riva's processed_text) and its audio (length,
level). No German ASR model exists here, so the German speech is not heard back; it is kept in
build/s2s-demo.wav for a person to hear.

    python examples/speech-to-speech/demo_s2s.py ASR_MANIFEST NMT_MANIFEST TTS_MANIFEST   (ports: NIM_HTTP_API_PORT and
                                                                         NIM_GRPC_API_PORT, and the next two)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "minilm-embed"))  # demo_embed.running, shared by the demos
from demo_embed import running  # noqa: E402

SAID = "call five five one two"
GERMAN = "rufe fünf fünf eins zwei an"
WAV = Path("build/s2s-demo.wav")
RATE = 16000


@dataclass
class Stages:
    heard: str  # the ASR stage's transcript
    translated: str  # the translation stage's text
    read_as: str  # how the TTS stage read it (Riva's processed_text)
    audio: np.ndarray  # the German speech, float32 at RATE
    seconds: dict  # each stage's wall time


def spoken(text: str, voice: str = "en-us") -> bytes:
    """A WAV file of `text` spoken by espeak-ng (the ASR stage's input, header and all)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "said.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(path), text], check=True, capture_output=True)
        return path.read_bytes()


def speech_to_speech(wav: bytes, asr_at: str, nmt_at: str, tts_at: str) -> Stages:
    import riva.client

    seconds = {}
    start = time.perf_counter()
    asr = riva.client.ASRService(riva.client.Auth(uri=asr_at))
    result = asr.offline_recognize(wav, riva.client.RecognitionConfig(language_code="en-US")).results
    heard = result[0].alternatives[0].transcript.strip() if result else ""
    seconds["asr"], start = time.perf_counter() - start, time.perf_counter()
    nmt = riva.client.NeuralMachineTranslationClient(riva.client.Auth(uri=nmt_at))
    translated = nmt.translate([heard], "", "en-US", "de-DE").translations[0].text
    seconds["translation"], start = time.perf_counter() - start, time.perf_counter()
    tts = riva.client.SpeechSynthesisService(riva.client.Auth(uri=tts_at))
    response = tts.synthesize(translated, language_code="de-DE", sample_rate_hz=RATE)
    seconds["tts"] = time.perf_counter() - start
    audio = np.frombuffer(response.audio, dtype="<i2").astype(np.float32) / 32768.0
    return Stages(heard, translated, response.meta.processed_text, audio, seconds)


def main(asr_manifest: str, nmt_manifest: str, tts_manifest: str) -> int:
    import soundfile

    http, grpc = int(os.environ.get("NIM_HTTP_API_PORT", "8000")), int(os.environ.get("NIM_GRPC_API_PORT", "50051"))
    with ExitStack() as servers:
        urls = [servers.enter_context(running(manifest, http + k, NIM_GRPC_API_PORT=str(grpc + k)))
                for k, manifest in enumerate((asr_manifest, nmt_manifest, tts_manifest))]
        if None in urls:
            return 1
        stages = speech_to_speech(spoken(SAID), *(f"127.0.0.1:{grpc + k}" for k in range(3)))
    WAV.parent.mkdir(exist_ok=True)
    soundfile.write(str(WAV), stages.audio, RATE, subtype="PCM_16")
    rms = float(np.sqrt(np.mean(stages.audio ** 2))) if len(stages.audio) else 0.0
    print(f"said (espeak-ng en-us): {SAID!r}")
    print(f"  ASR (asr-digits)        heard      {stages.heard!r}  {stages.seconds['asr'] * 1000:.0f} ms")
    print(f"  NMT (nmt-en-de)         translated {stages.translated!r}  {stages.seconds['translation'] * 1000:.0f} ms")
    print(f"  TTS (tts-digits-de)     read it as {stages.read_as!r} and said it in {len(stages.audio) / RATE:.2f} s "
          f"of audio (RMS {rms:.3f}) -> {WAV}  {stages.seconds['tts'] * 1000:.0f} ms")
    print("  (no German ASR model exists here to hear the German speech back)")
    ok = stages.heard == SAID and stages.translated == GERMAN and len(stages.audio) > RATE // 2 and rms > 0.01
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
