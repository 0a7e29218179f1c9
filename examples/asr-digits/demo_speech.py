"""The speech end of `make demo`: speak a sentence with espeak-ng, serve a speech profile (asr-digits,
then the transducer asr-digits-rnnt, the Whisper tiny-whisper and the Canary tiny-canary) with runtime_min, transcribe
the recording through POST /v1/audio/transcriptions (espeak-ng's own 22.05 kHz WAV: the server
resamples it), then stream the same audio in 100 ms pieces to the streaming endpoint and print its
partial transcripts; then the same through Riva's gRPC API with the official nvidia-riva-client
(offline with word times, and streaming with interim results), as Speech NIM clients call it; and
stop the runtime with SIGTERM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "minilm-embed"))  # demo_embed.running, shared by the demos
from demo_embed import running  # noqa: E402

SENTENCE = "call four one five nine"
VOICE = "en-us-nyc+f4"  # an accent and a speaker the model never heard in training


def main(manifest: str, port: int) -> int:
    import soundfile
    import yaml

    model = yaml.safe_load(Path(manifest).read_text())["profiles"][0]["model"]

    with tempfile.TemporaryDirectory() as tmp, running(manifest, port) as url:
        if url is None:
            return 1
        wav = Path(tmp) / "spoken.wav"
        subprocess.run(["espeak-ng", "-v", VOICE, "-s", "150", "-w", str(wav), SENTENCE], check=True)
        with open(wav, "rb") as f:
            reply = httpx.post(f"{url}/v1/audio/transcriptions", files={"file": ("spoken.wav", f, "audio/wav")},
                               data={"model": model, "response_format": "verbose_json"}, timeout=60)
        reply.raise_for_status()
        result = reply.json()
        print(f"{model}: espeak-ng ({VOICE}) said {SENTENCE!r}; POST {url}/v1/audio/transcriptions -> {result['text']!r} "
              f"({result['duration']:.2f} s of audio)")
        audio, rate = soundfile.read(str(wav), dtype="int16")
        pcm = audio.tobytes()
        pieces = (pcm[i:i + rate // 10 * 2] for i in range(0, len(pcm), rate // 10 * 2))  # 100 ms at a time
        with httpx.stream("POST", f"{url}/v1/audio/transcriptions/stream?sample_rate={rate}", content=pieces,
                          timeout=60) as stream:
            stream.raise_for_status()
            for line in stream.iter_lines():
                if line.startswith("data: {"):
                    event = json.loads(line[6:])
                    print(f"  stream {'final  ' if event.get('is_final') else 'partial'}: {event.get('text')!r}")
        riva_text = _riva(wav)
        return 0 if result["text"] and riva_text == result["text"] else 1


def _riva(wav: Path) -> str:
    """Riva's RivaSpeechRecognition on NIM_GRPC_API_PORT: the file's bytes as Riva's scripts send them."""
    import riva.client

    address = f"127.0.0.1:{os.environ.get('NIM_GRPC_API_PORT', '50051')}"
    service = riva.client.ASRService(riva.client.Auth(uri=address))
    config = riva.client.RecognitionConfig(language_code="en-US", enable_word_time_offsets=True)
    result = service.offline_recognize(wav.read_bytes(), config).results[0].alternatives[0]
    words = ", ".join(f"{w.word} {w.start_time}-{w.end_time} ms" for w in result.words)
    print(f"gRPC {address} RivaSpeechRecognition/Recognize -> {result.transcript!r} ({words})")
    streaming = riva.client.StreamingRecognitionConfig(config=riva.client.RecognitionConfig(language_code="en-US"),
                                                       interim_results=True)
    with riva.client.AudioChunkFileIterator(str(wav), 2205) as chunks:  # 100 ms of espeak-ng's 22.05 kHz
        for response in service.streaming_response_generator(chunks, streaming):
            for r in response.results:
                print(f"  gRPC stream {'final  ' if r.is_final else 'interim'}: {r.alternatives[0].transcript!r} "
                      f"({r.audio_processed:.1f} s heard)")
    return result.transcript


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(os.environ.get("NIM_HTTP_API_PORT", "8000"))))
