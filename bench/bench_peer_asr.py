"""Speech recognition against sherpa-onnx, the engine a user would pick instead to serve NeMo models
on a CPU, side by side in one run on the profiles' own graphs, for both speech examples: the CTC
model (asr-digits) and the transducer (asr-digits-rnnt). runtime_min's POST
/v1/audio/transcriptions (one file per request, 1 and 16 clients) against sherpa-onnx's C++ offline
websocket server (sherpa-onnx-bin, one file per message, 1 and 16 clients), and sherpa-onnx's
Python API in process (decode_streams over 1 and 16 files). Between them, to say where runtime_min's
time goes: Triton's own gRPC called directly on the ensemble runtime_min deployed (what the API
front end adds above Triton) and, for the CTC model, runtime_min's own path without Triton
(nimbuild.serving.audio's front end, the profile's graph on onnxruntime, CTC's best path: what Triton
adds above the model).

The same work is checked, not assumed: sherpa-onnx loads the profile's model.onnx (the CTC graph,
or the transducer's encoder) with only the metadata it reads added (the graph is compared); the
transducer's prediction and joint networks are NeMo's own exports of the same checkpoint, the
graphs sherpa-onnx's NeMo scripts make, where runtime_min runs NeMo's fused decoder-joint export
(both searches greedy, at most 10 symbols a frame, as the checkpoint's decoding config); every side hears the same 16 kHz float32 samples
from the same WAV files (so neither resamples), decoding is CTC greedy on both, each server runs
one decoding thread pool of 2 onnxruntime threads with batches of at most 16 (runtime_min's profile:
max_batch_size 16), and every side's transcripts are compared with the spoken sentences and with
each other. The front ends differ by design: sherpa-onnx computes NeMo's features with
kaldi-native-fbank in its librosa mode, runtime_min with its numpy port of NeMo's preprocessor
that the build checks against NeMo; the bench counts the transcripts where that changes a word.

Not measured: sherpa-onnx's streaming server. Its online recognizer takes only NeMo's cache-aware
streaming exports (cache tensors and their metadata); this example's Conformer is full-context,
which runtime_min streams by re-running a bounded window, so there is no same model to stream."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from bench_asr import Clip, _clips

from common import PEERS_VENV, multipart, p, peer_server, post, run_peer, table, triton_grpc_address

REPO = Path(__file__).resolve().parents[1]
THREADS = 2
SIZES = (1, 16)
ROUNDS = 3
PASSES = 4  # each clip sent this many times per served measurement
PROFILE = "onnxruntime-fp32-throughput-ofl"
MODELS = {"ctc": "asr-digits", "transducer": "asr-digits-rnnt"}


def sherpa_model(kind: str, workspace: Path, nemo: Path, out: Path) -> dict:
    """What sherpa-onnx loads for the profile, as its own NeMo export scripts lay it out: the
    profile's graph (CTC, or the transducer's encoder) with the metadata its NeMo readers need,
    tokens.txt (the vocabulary, then <blk>), and for a transducer NeMo's exports of the same
    checkpoint's prediction and joint networks. The profile's graph itself is left as it is."""
    import onnx

    from nimbuild.serving.audio import subsampling_factor

    info = json.loads((workspace / "model_info.json").read_text())["runtime"]
    vocabulary = json.loads((workspace / info["vocabulary"]).read_text())
    tokens = vocabulary["tokens"]
    assert vocabulary["blank"] == len(tokens), "sherpa-onnx takes the blank as the last token"
    features = int(info["features"]["features"])
    meta = {"subsampling_factor": subsampling_factor(info), "normalize_type": info["features"]["normalize"],
            "model_type": info["model_class"], "feat_dim": features}
    out.mkdir(parents=True, exist_ok=True)
    spec = {"kind": kind, "threads": THREADS, "features": features, "tokens": str(out / "tokens.txt")}
    if kind == "ctc":
        meta["vocab_size"] = len(tokens) + 1  # sherpa-onnx's CTC reader counts the blank
    else:
        meta.update(vocab_size=len(tokens), **_nemo_prediction_and_joint(nemo, out))  # its transducer reader does not
        spec.update(decoder=str(out / "decoder.onnx"), joiner=str(out / "joiner.onnx"))
    model = onnx.load(str(workspace / "model.onnx"))
    graph = model.graph.SerializeToString()
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    assert model.graph.SerializeToString() == graph
    onnx.save(model, str(out / "model.onnx"))
    spec["model" if kind == "ctc" else "encoder"] = str(out / "model.onnx")
    # one "token id" a line; a line of only an id is the space token, as sherpa-onnx reads it
    (out / "tokens.txt").write_text("".join(f"{t} {i}\n" if t != " " else f"{i}\n" for i, t in enumerate(tokens))
                                    + f"<blk> {len(tokens)}\n")
    return spec


NEMO_EXPORT = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from nimbuild.export.asr import quiet, restore
from nimbuild.sources.nemo import resolve_nemo
out = Path(sys.argv[3])
with quiet():
    model = restore(resolve_nemo(sys.argv[2], out), "asr-rnnt")
    model.decoder.export(str(out / "decoder.onnx"))
    model.joint.export(str(out / "joiner.onnx"))
print(json.dumps({"pred_rnn_layers": model.decoder.pred_rnn_layers, "pred_hidden": model.decoder.pred_hidden}))
"""


def _nemo_prediction_and_joint(nemo: Path, out: Path) -> dict:
    """NeMo's own exports of a transducer's prediction and joint networks (what sherpa-onnx's NeMo
    scripts run), in a process of its own; the prediction network's shape for the metadata."""
    done = subprocess.run([sys.executable, "-c", NEMO_EXPORT, str(REPO), str(nemo), str(out)], capture_output=True,
                          text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"NeMo's export failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _at_model_rate(clips: list[Clip], root: Path) -> list[Clip]:
    """The clips resampled once to the model's 16 kHz, as the trainer feeds it, written as float
    WAV: both sides then read the same float32 samples and neither resamples."""
    import soundfile

    sys.path[:0] = [str(p) for p in sorted((REPO / "examples").iterdir())]  # the examples' scripts
    import make_asr_digits as trainer

    out = []
    for clip in clips:
        path = root / f"16k-{clip.path.name}"
        audio = trainer.load_16k(clip.path)
        soundfile.write(str(path), audio, trainer.SAMPLE_RATE, subtype="FLOAT")
        out.append(Clip(path, len(audio) / trainer.SAMPLE_RATE, clip.text))
    return out


class _Served:
    """runtime_min's offline route, each client on a kept HTTP/1.1 connection (http.client), the
    multipart bodies made before the clock starts."""

    def __init__(self, port: int, clips: list[Clip], model: str):
        self.port, self.clips = port, clips
        self.bodies = [multipart({"model": model}, "file", c.path.name, c.path.read_bytes(), "audio/wav")
                       for c in clips]

    def one(self, k: int) -> tuple[float, str]:
        body, kind = self.bodies[k]
        start = time.perf_counter()
        text = json.loads(post("127.0.0.1", self.port, "/v1/audio/transcriptions", body, kind))["text"]
        return time.perf_counter() - start, text

    def run(self, clients: int) -> dict:
        return _clients(self.one, clients, self.clips)


def _clients(one, clients: int, clips: list[Clip]) -> dict:
    """`clients` threads sending every clip PASSES times through `one(k) -> (seconds, text)`, each
    thread's connection opened before the clock starts: RTFX, each request's latency, and the
    transcripts of the first pass."""
    import concurrent.futures

    work = list(range(len(clips))) * PASSES
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(clients)))  # each thread's connection, opened untimed
        start = time.perf_counter()
        results = list(pool.map(one, work))
        wall = time.perf_counter() - start
    return {"rtfx": sum(clips[k].seconds for k in work) / wall, "latencies": [t for t, _ in results],
            "texts": [text for _, text in results[:len(clips)]]}


class _TritonDirect:
    """tritonclient's gRPC client on the Triton that runtime_min started, calling the offline
    ensemble as runtime_min's route does (the audio as FP32 samples; text and words back): what
    the API front end adds above Triton, measured rather than inferred."""

    def __init__(self, workspace_root: Path, model: str, clips: list[Clip]):
        import soundfile

        self.address, self.model, self.clips = triton_grpc_address(workspace_root), model, clips
        self.audio = [soundfile.read(str(c.path), dtype="float32")[0] for c in clips]

    def run(self, clients: int) -> dict:
        import threading

        import tritonclient.grpc as triton_grpc

        local = threading.local()

        def one(k: int) -> tuple[float, str]:
            client = getattr(local, "client", None) or triton_grpc.InferenceServerClient(self.address)
            local.client = client
            audio = triton_grpc.InferInput("audio", [1, len(self.audio[k])], "FP32")
            audio.set_data_from_numpy(self.audio[k].reshape(1, -1))
            outputs = [triton_grpc.InferRequestedOutput(name) for name in ("text", "words")]
            start = time.perf_counter()
            result = client.infer(self.model, [audio], outputs=outputs)
            return time.perf_counter() - start, result.as_numpy("text").reshape(-1)[0].decode()

        return _clients(one, clients, self.clips)


class _OwnPath:
    """runtime_min's offline arithmetic without Triton or the API, in this process: nimbuild.serving.audio's
    front end per file, the batch padded and run through the profile's graph on onnxruntime (the
    session options Triton's model uses), then CTC's best path with its word timings, as the
    served decoder answers them."""

    def __init__(self, workspace: Path, clips: list[Clip]):
        import soundfile

        from nimbuild.serving.audio import FrontEnd, Vocabulary
        from runtime_min.deploy.runners import OnnxRunner

        self.runtime = json.loads((workspace / "model_info.json").read_text())["runtime"]
        self.front = FrontEnd.load(self.runtime["features"], workspace)
        self.vocabulary = Vocabulary.load(workspace / self.runtime["vocabulary"])
        self.session = OnnxRunner(workspace / "model.onnx").session
        self.clips = clips
        self.audio = [soundfile.read(str(c.path), dtype="float32")[0] for c in clips]

    def decode(self, batch: list) -> list[str]:
        import numpy as np

        from nimbuild.serving.audio import ctc_greedy, ctc_greedy_words, encoded_lengths

        feats = [self.front(a) for a in batch]
        lengths = np.array([self.front.frames(len(a)) for a in batch], dtype=np.int64)
        signal = np.zeros((len(feats), feats[0].shape[0], max(f.shape[-1] for f in feats)), dtype=np.float32)
        for i, f in enumerate(feats):
            signal[i, :, :f.shape[-1]] = f
        (logprobs,) = self.session.run(["logprobs"], {"audio_signal": signal, "length": lengths})
        encoded = encoded_lengths(lengths, self.runtime["subsampling"])
        texts = []
        for row, frames in zip(logprobs, encoded):
            ctc_greedy_words(row, int(frames), self.vocabulary)
            texts.append(ctc_greedy(row, int(frames), self.vocabulary))
        return texts

    def run(self, size: int) -> dict:
        start, texts = time.perf_counter(), []
        for i in range(0, len(self.audio), size):
            texts += self.decode(self.audio[i:i + size])
        return {"rtfx": sum(c.seconds for c in self.clips) / (time.perf_counter() - start), "texts": texts}


@contextlib.contextmanager
def _sherpa_server(model: dict, log: Path) -> Iterator[int]:
    """sherpa-onnx's C++ offline websocket server on the same graphs: one work thread (the pool that
    decodes) of THREADS onnxruntime threads, batches of at most 16, as runtime_min's profile; its
    port, for the block."""
    from helpers.servers import free_port

    binary = PEERS_VENV / "bin" / "sherpa-onnx-offline-websocket-server"
    if not binary.exists():
        raise SystemExit(f"{binary} is missing: run `make peers` (make bench does)")
    port = free_port()
    graphs = [f"--nemo-ctc-model={model['model']}", "--model-type=nemo_ctc"] if model["kind"] == "ctc" else \
        [f"--encoder={model['encoder']}", f"--decoder={model['decoder']}", f"--joiner={model['joiner']}",
         "--model-type=nemo_transducer"]
    command = [str(binary), f"--port={port}", "--num-io-threads=1", "--num-work-threads=1",
               f"--num-threads={model['threads']}", f"--max-batch-size={max(SIZES)}", f"--tokens={model['tokens']}",
               *graphs, f"--feat-dim={model['features']}", "--decoding-method=greedy_search",
               f"--log-file={log.with_suffix('.requests.log')}"]
    with peer_server("sherpa-onnx's server", command, port, log, timeout=60):
        yield port


def main() -> tuple[str, dict]:
    """Both speech examples on the same clips, one after the other; see _compare."""
    texts, data = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clips = _at_model_rate(_clips(root), root)
        os.environ.update(NIMBUILD_ORT_THREADS=str(THREADS), NIM_TAGS_SELECTOR="mode=ofl")
        for kind, example in MODELS.items():
            text, data[kind] = _compare(kind, example, clips, root / kind)
            texts.append(text)
    return "\n\n".join(texts), data


def _compare(kind: str, example: str, clips: list[Clip], root: Path) -> tuple[str, dict]:
    """Each round: runtime_min served, sherpa-onnx served, sherpa-onnx in process (a fresh process,
    its load untimed) and, for CTC, runtime_min's path in process, each at 1 and 16, so the
    machine's swings hit every side alike; medians over the rounds."""
    from demo_embed import running

    from common import compile_recipe
    from helpers.servers import free_port

    sides = ["runtime_min served", "Triton directly", "sherpa-onnx served", "runtime_min in process",
             "sherpa-onnx in process"]
    if kind != "ctc":
        sides.remove("runtime_min in process")
    rtfx = {side: {n: [] for n in SIZES} for side in sides}
    latencies = {side: {n: [] for n in SIZES} for side in sides[:3]}
    texts: dict[str, list[str]] = {}
    out = root / "out"
    recipe = REPO / "examples" / example / "recipe.yaml"
    compile_recipe(recipe, out, "--target", "0")
    workspace = out / "profiles" / PROFILE
    described = json.dumps([{"path": str(c.path), "seconds": c.seconds} for c in clips])
    model = sherpa_model(kind, workspace, REPO / "examples" / example / f"{example}.nemo", root / "sherpa")
    os.environ.update(NIM_CACHE_PATH=str(root / "cache"), NIM_WORKSPACE=str(root / "runtime"))
    own = _OwnPath(workspace, clips) if "runtime_min in process" in sides else None
    port = free_port()
    with _sherpa_server(model, root / "sherpa.log") as sherpa_port, running(str(out / "profiles.yaml"), port) as url:
        if url is None:
            raise RuntimeError("runtime_min did not start")
        served, triton = _Served(port, clips, example), _TritonDirect(root / "runtime", example, clips)
        served.run(1)  # warm-up
        if own:
            own.run(4)
        for _ in range(ROUNDS):
            peer_served = run_peer("sherpa_onnx_asr.py", "clients", sherpa_port, PASSES, *SIZES, stdin=described)
            peer_local = run_peer("sherpa_onnx_asr.py", "inprocess", json.dumps(model), *SIZES, stdin=described)
            for n in SIZES:
                measured = {"runtime_min served": served.run(n), "Triton directly": triton.run(n),
                            "sherpa-onnx served": _peer_side(peer_served, n),
                            "sherpa-onnx in process": _peer_side(peer_local, n)}
                if own:
                    measured["runtime_min in process"] = own.run(n)
                for side, result in measured.items():
                    rtfx[side][n].append(result["rtfx"])
                    if side in latencies:
                        latencies[side][n] += result["latencies"]
                    texts[f"{side}, {n}"] = result["texts"]
    same = _same_work(kind, texts, [c.text for c in clips], peer_local, model, workspace)
    return _report(example, rtfx, latencies, same, sum(c.seconds for c in clips))


def _peer_side(answer: dict, size: int) -> dict:
    side = {"rtfx": answer["rtfx"][str(size)], "texts": answer["texts"][str(size)]}
    if "latencies" in answer:
        side["latencies"] = answer["latencies"][str(size)]
    return side


def _same_work(kind: str, texts: dict[str, list[str]], spoken: list[str], peer: dict, model: dict,
               workspace: Path) -> dict:
    """Every side's transcripts against the spoken sentences (word error rate) and against the
    served ones; the graph sherpa-onnx ran is the profile's. A side that mishears more than the
    served path by over a point of WER fails the bench: a faster wrong transcript is not a result."""
    import onnx

    ours = model["model" if kind == "ctc" else "encoder"]
    assert onnx.load(ours).graph == onnx.load(str(workspace / "model.onnx")).graph, "not the profile's graph"
    assert peer["threads"] == THREADS
    sys.path[:0] = [str(p) for p in sorted((REPO / "examples").iterdir())]  # the examples' scripts
    from make_asr_digits import word_error_rate

    wer = {name: word_error_rate(spoken, got) for name, got in texts.items()}
    reference = texts[f"runtime_min served, {SIZES[0]}"]
    differ = {name: sum(a != b for a, b in zip(reference, got)) for name, got in texts.items()}
    same_engine = [name for name in texts if not name.startswith("sherpa-onnx")]
    assert not any(differ[name] for name in same_engine), f"runtime_min's transcripts differ between paths: {differ}"
    worst = max(wer.values())
    assert worst <= wer[f"runtime_min served, {SIZES[0]}"] + 0.01, f"a side mishears more: {wer}"
    peer_name = f"sherpa-onnx in process, {SIZES[0]}"
    graphs = "the profile's model.onnx, sherpa-onnx's metadata added (graph compared)" if kind == "ctc" else \
        "the profile's encoder (metadata added, graph compared); NeMo's prediction and joint exports for sherpa-onnx"
    return {"graph": graphs, "audio": f"{len(spoken)} held-out espeak-ng clips, 16 kHz float32 WAV read by both sides",
            "decoding": "CTC greedy both sides" if kind == "ctc" else "transducer greedy, 10 symbols a frame at most",
            "threads": f"{THREADS} onnxruntime threads each side; "
            "sherpa-onnx's server 1 work thread, runtime_min's model 1 instance",
            "WER vs the spoken text": ", ".join(f"{n.split(',')[0]} {wer[n]:.3f}" for n in texts if n.endswith(", 1")),
            "transcripts unlike runtime_min's": f"sherpa-onnx {differ[peer_name]} of {len(reference)} "
                                                "(its kaldi-native-fbank front end against runtime_min's)",
            "sherpa-onnx": peer["version"]}


def _report(example: str, rtfx: dict, latencies: dict, same: dict, seconds: float) -> tuple[str, dict]:
    median = {side: {n: statistics.median(v) for n, v in by.items()} for side, by in rtfx.items()}
    ratio = {n: statistics.median(a / b for a, b in zip(rtfx["runtime_min served"][n], rtfx["sherpa-onnx served"][n]))
             for n in SIZES}
    rows = []
    for n in SIZES:
        for side in rtfx:
            lat = latencies.get(side, {}).get(n)
            rows.append([f"{side}, {'batch' if 'in process' in side else 'clients'} {n}", median[side][n],
                         f"{median[side][n] / median['sherpa-onnx served'][n]:.3f}x",
                         f"{p(lat, 0.5):.1f}" if lat else "-", f"{p(lat, 0.99):.1f}" if lat else "-"])
    text = "\n\n".join([
        table(f"{example} against sherpa-onnx (RTFX = audio seconds per wall second; {seconds:.0f} s of "
              f"audio a round, served sides {PASSES} passes; {ROUNDS} rounds, medians)",
              ["path", "RTFX", "vs sherpa-onnx served", "p50 ms", "p99 ms"], rows),
        table("Same work, checked", ["check", "value"], [[k, v] for k, v in same.items()]),
    ])
    return text, {"rtfx": {side: {str(n): v for n, v in by.items()} for side, by in median.items()},
                  "ratio_served_vs_sherpa_served": {str(n): r for n, r in ratio.items()}, "same_work": same}


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "tests"))
    print(main()[0])
