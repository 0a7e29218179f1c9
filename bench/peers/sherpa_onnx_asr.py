"""sherpa-onnx (a peer, run in bench/.venv-peers) on the graphs a nimbuild speech profile serves, in
two roles; the answer is JSON on stdout.

    python sherpa_onnx_asr.py inprocess MODEL_JSON SIZE [SIZE ...] < clips.json
        its Python API in this process: RTFX decoding SIZE clips per decode_streams call
    python sherpa_onnx_asr.py clients PORT PASSES SIZE [SIZE ...] < clips.json
        SIZE client threads against its C++ offline websocket server (sherpa-onnx-bin), each on
        a kept connection, every clip sent PASSES times: RTFX and each request's latency

MODEL_JSON names the model as bench_peer_asr made it: {"kind": "ctc", "model", "tokens"} (the
profile's CTC graph with sherpa-onnx's metadata added) or {"kind": "transducer", "encoder",
"decoder", "joiner", "tokens"} (the profile's encoder with that metadata, and NeMo's own exports
of the same checkpoint's prediction and joint networks), with "threads" and "features".
clips.json is a list of {"path", "seconds"}: WAV files at the model's rate, read here as float32
(the samples runtime_min reads from the same files)."""

from __future__ import annotations

import concurrent.futures
import json
import struct
import sys
import threading
import time


def _read(clips: list[dict]) -> list:
    import soundfile

    audio = []
    for clip in clips:
        samples, rate = soundfile.read(clip["path"], dtype="float32")
        audio.append((rate, samples))
    return audio


def recognizer(model: dict):
    import sherpa_onnx

    common = dict(tokens=model["tokens"], num_threads=model["threads"], sample_rate=16000,
                  feature_dim=model["features"], decoding_method="greedy_search")
    if model["kind"] == "ctc":
        return sherpa_onnx.OfflineRecognizer.from_nemo_ctc(model=model["model"], **common)
    return sherpa_onnx.OfflineRecognizer.from_transducer(encoder=model["encoder"], decoder=model["decoder"],
                                                         joiner=model["joiner"], model_type="nemo_transducer", **common)


def inprocess(model: dict, sizes: list[int], clips: list[dict]) -> dict:
    engine = recognizer(model)
    audio = _read(clips)

    def decode(batch: list) -> list[str]:
        streams = []
        for rate, samples in batch:
            stream = engine.create_stream()
            stream.accept_waveform(rate, samples)
            streams.append(stream)
        engine.decode_streams(streams)
        return [stream.result.text for stream in streams]

    decode(audio[:4])  # warm
    seconds = sum(c["seconds"] for c in clips)
    rtfx, texts = {}, {}
    for size in sizes:
        start, got = time.perf_counter(), []
        for i in range(0, len(audio), size):
            got += decode(audio[i:i + size])
        rtfx[size] = seconds / (time.perf_counter() - start)
        texts[size] = got
    return {"rtfx": rtfx, "texts": texts, "threads": model["threads"], "features": model["features"]}


def clients(port: int, passes: int, sizes: list[int], clips: list[dict]) -> dict:
    from websockets.sync.client import connect

    audio = _read(clips)
    messages = [struct.pack("<ii", rate, samples.nbytes) + samples.tobytes() for rate, samples in audio]
    local = threading.local()

    def send(k: int) -> tuple[float, str]:
        ws = getattr(local, "ws", None)
        if ws is None:
            ws = local.ws = connect(f"ws://127.0.0.1:{port}", max_size=None, compression=None)
            opened.append(ws)
        start = time.perf_counter()
        ws.send(messages[k])
        text = json.loads(ws.recv())["text"]
        return time.perf_counter() - start, text

    seconds = sum(c["seconds"] for c in clips) * passes
    rtfx, latencies, texts = {}, {}, {}
    for size in sizes:
        opened: list = []
        work = list(range(len(messages))) * passes
        with concurrent.futures.ThreadPoolExecutor(size) as pool:
            list(pool.map(send, range(min(size, len(messages)))))  # each thread's connection, opened untimed
            start = time.perf_counter()
            results = list(pool.map(send, work))
            rtfx[size] = seconds / (time.perf_counter() - start)
        for ws in opened:
            ws.send("Done")
            ws.close()
        latencies[size] = [t for t, _ in results]
        texts[size] = [text for _, text in results[:len(messages)]]
    return {"rtfx": rtfx, "latencies": latencies, "texts": texts}


def main() -> None:
    import sherpa_onnx

    role, args, clips = sys.argv[1], sys.argv[2:], json.load(sys.stdin)
    if role == "inprocess":
        answer = inprocess(json.loads(args[0]), [int(s) for s in args[1:]], clips)
    elif role == "clients":
        answer = clients(int(args[0]), int(args[1]), [int(s) for s in args[2:]], clips)
    else:
        raise SystemExit(f"unknown role {role!r}: inprocess or clients")
    print(json.dumps({**answer, "version": sherpa_onnx.__version__}))


if __name__ == "__main__":
    main()
