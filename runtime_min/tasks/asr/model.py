"""Triton Python models for speech profiles (CTC and RNNT/TDT transducers): one file, four stages
(the `stage` parameter).

Offline (`mode: ofl`), an ensemble of three models, each with its own dynamic batcher:
    features  audio [samples] float32 at the model's rate -> audio_signal [features, frames], length [1]
    encoder   the core network through its runner (onnxruntime, a TensorRT-RTX engine):
              audio_signal, length -> logprobs [frames', vocab+1] (CTC) or the encoder's outputs
              [hidden, frames'] (transducer), cut to each utterance's encoded length (absent when
              the core runs on a native backend as its own ensemble step)
    decoder   those and the feature length -> greedy decoding over the encoded frames -> text: CTC's
              best path, or the transducer search (nimbuild/serving/transducer.py) over the decoder-joint
              graph, all of a batch's utterances searched together
Streaming (`mode: str`), one sequence-batched model, as Triton's Kaldi ASR integration does: pieces
of audio arrive with a correlation id and start/end flags, and every piece is answered with the
transcript so far. The encoder is full-context, so the stream is decoded buffered (buffered.py):
each chunk is committed from a window of bounded left context and one chunk of right context, so
a chunk's work stays flat however long the stream runs. A transducer stream carries its search
state from chunk to chunk, so each committed frame is searched once; a partial searches a copy.

The arithmetic is nimbuild.serving.audio's, the same code the build checked against NeMo.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

HERE = Path(__file__).resolve().parent
LEFT_CONTEXT_MS = 4000  # audio before a chunk that its window sees, as NeMo's buffered inference's 4 s buffer
RIGHT_CONTEXT_MS = 800  # audio after it: 400 ms left 5 of 40 held-out finals unlike offline, 800 ms 2 (README)
sys.path.insert(0, str(HERE))  # the helpers copied beside this file, whatever else is installed

from nimbuild.serving.audio import FrontEnd, Vocabulary, ctc_greedy, ctc_greedy_words, encoded_lengths, frame_seconds, words_of  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        workspace = HERE
        self.stage = params["stage"]
        info = json.loads((workspace / "model_info.json").read_text())
        runtime = info["runtime"]
        self.layers = runtime["subsampling"]
        self.padded = bool(runtime.get("padded_batches", True))
        self.max_frames = int(runtime["max_frames"])
        if self.stage in ("features", "stream"):
            self.front = FrontEnd.load(runtime["features"], workspace)
        self.takes_length = any(i["name"] == "length" for i in info["inputs"])
        self.output = info["outputs"][0]["name"]  # logprobs (CTC) or outputs (a transducer's encoder)
        self.transducer = bool(runtime.get("decoder"))  # its encoder's frames are [hidden, frames'] in the graph
        self.search = None  # the transducer search (decoder and stream stages)
        if self.stage in ("encoder", "stream"):
            from runners import open_runner

            self.bls = params["runner"].startswith("triton:")  # the native core model: scalars travel as [batch, 1]
            self.session = open_runner(params["runner"], workspace / params["core"],
                                       int(args.get("model_instance_device_id") or 0))
        if self.stage in ("decoder", "stream"):
            self.vocabulary = Vocabulary.load(workspace / runtime["vocabulary"])
            self.frame_ms = 1000.0 * frame_seconds(runtime)
            if runtime.get("decoder"):
                self.search = _open_search(runtime["decoder"], workspace)
        # streaming (buffered.py): encoder frames in samples, the chunk committed at a time, the left context kept
        streaming = runtime.get("streaming") or {}
        rate = int(runtime["sample_rate"])
        self.unit = round(frame_seconds(runtime) * rate)
        self.chunk = int(streaming.get("chunk_ms") or 400) * rate // 1000
        left_ms = streaming.get("left_context_ms") or LEFT_CONTEXT_MS
        self.right_context = int(streaming.get("right_context_ms") or RIGHT_CONTEXT_MS) * rate // 1000
        # a window (left context, chunk, right context) must fit the profile's largest input
        room = self.max_frames * int(runtime["features"]["hop_length"]) - self.chunk - self.right_context
        self.left_context = max(0, min(int(left_ms) * rate // 1000, room))
        self.streams: dict = {}

    def execute(self, requests):
        return getattr(self, "_" + self.stage)(requests)

    def _features(self, requests):
        responses = []
        for request in requests:
            audio = pb_utils.get_input_tensor_by_name(request, "audio").as_numpy()[0]
            frames = self.front.frames(len(audio))
            if not 1 <= frames <= self.max_frames:
                responses.append(_error(f"the audio makes {frames} feature frames; this profile takes 1 to {self.max_frames}"))
                continue
            feats = self.front(audio)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("audio_signal", feats[None]),
                pb_utils.Tensor("length", np.array([[frames]], dtype=np.int64))]))
        return responses

    def _encoder(self, requests):
        feats = [pb_utils.get_input_tensor_by_name(r, "audio_signal").as_numpy()[0] for r in requests]
        lengths = np.array([int(pb_utils.get_input_tensor_by_name(r, "length").as_numpy().reshape(-1)[0]) for r in requests])
        acoustic, encoded = self._run(feats, lengths)
        wire = [acoustic[i, :encoded[i]] for i in range(len(requests))]  # the graph's own layout on the wire
        return [pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(self.output, np.ascontiguousarray(a.T if self.transducer else a)[None])]) for a in wire]

    def _decoder(self, requests):
        rows = []
        for request in requests:
            acoustic = pb_utils.get_input_tensor_by_name(request, self.output).as_numpy()[0]
            acoustic = acoustic.T if self.transducer else acoustic  # frames first
            frames = pb_utils.get_input_tensor_by_name(request, "length").as_numpy().reshape(-1)[:1]
            rows.append(acoustic[:min(len(acoustic), int(encoded_lengths(frames.astype(np.int64), self.layers)[0]))])
        return self._answers(rows, [None] * len(rows))

    def _stream(self, requests):
        """One piece of audio per request, from different sequences (buffered.py): commit every
        sequence's chunks that have their right context, then one window per sequence for its
        partial (or, at the end, its last frames); each round of windows is one batched run."""
        from buffered import BufferedStream

        live = []
        for request in requests:
            corrid = int(pb_utils.get_input_tensor_by_name(request, "CORRID").as_numpy().reshape(-1)[0])
            start = bool(pb_utils.get_input_tensor_by_name(request, "START").as_numpy().reshape(-1)[0])
            end = bool(pb_utils.get_input_tensor_by_name(request, "END").as_numpy().reshape(-1)[0])
            chunk = pb_utils.get_input_tensor_by_name(request, "audio_chunk").as_numpy().reshape(-1)
            if start or corrid not in self.streams:
                self.streams[corrid] = BufferedStream(self.unit, self.chunk, self.left_context, self.right_context,
                                                      self.search.start() if self.search else None)
            stream = self.streams[corrid]
            stream.push(chunk)
            if end:
                del self.streams[corrid]
            live.append((stream, end))
        tentative = {}  # a commit's right-context frames: the partial then needs no run of its own
        while True:  # commit rounds: usually one chunk per sequence, more when a client sent a lot at once
            ready = [(stream, *stream.window(final=False)) for stream, _ in live if stream.ready()]
            if not ready:
                break
            for (stream, _, keep_from, keep_to), acoustic in zip(ready, self._windows([w[1] for w in ready])):
                tentative[id(stream)] = stream.commit(acoustic, keep_from, keep_to, final=False)
        extra = [tentative.get(id(stream)) if not end and not stream.ready() else None for stream, end in live]
        windows = [(i, stream, end, *stream.window(final=end)) for i, (stream, end) in enumerate(live)
                   if extra[i] is None]
        heard = [w for w in windows if self.front.frames(len(w[3])) >= 1]
        for (i, stream, end, _, keep_from, _), acoustic in zip(heard, self._windows([w[3] for w in heard])):
            if end:
                stream.commit(acoustic, keep_from, None, final=True)
            else:
                extra[i] = acoustic[keep_from:]
        return self._stream_answers([stream for stream, _ in live], extra)

    def _stream_answers(self, streams: list, extra: list):
        """Each stream's transcript so far: its committed frames, then its tentative ones. CTC decodes
        the committed frames again each time (a cheap argmax); a transducer searches each committed
        frame once, carrying the search in the stream, and a partial searches the tentative frames
        from a copy."""
        if self.search is None:
            merged = [stream.acoustic(more) for stream, more in zip(streams, extra)]
            return [self._transcript(m, len(m)) if len(m) else _text("", []) for m in merged]
        pending = [(stream, stream.take_committed()) for stream in streams]
        pending = [(stream, frames) for stream, frames in pending if len(frames)]
        self.search.decode([s.search for s, _ in pending], [f for _, f in pending], [s.searched for s, _ in pending])
        for stream, frames in pending:
            stream.searched += len(frames)
        return self._answers([np.zeros((0, 1), np.float32) if more is None else more for more in extra],
                             [stream.search for stream in streams], [stream.searched for stream in streams])

    def _answers(self, rows: list[np.ndarray], hypotheses: list, first_frames: list[int] | None = None):
        """Transcripts of frames-first acoustic rows: CTC's best path, or one batched transducer
        search of every row (continuing copies of `hypotheses` where given, fresh searches else)."""
        if self.search is None:
            return [self._transcript(a, len(a)) for a in rows]
        searches = [h.copy() if h is not None else self.search.start() for h in hypotheses]
        self.search.decode(searches, rows, first_frames or [0] * len(rows))
        return [self._searched(h) for h in searches]

    def _windows(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        """Each window's valid acoustic frames [frames', X], the windows run as one batch."""
        if not audios:
            return []
        frames = [self.front.frames(len(a)) for a in audios]
        acoustic, encoded = self._run([self.front(a) for a in audios], frames)
        return [acoustic[row, :int(encoded[row])] for row in range(len(audios))]

    def _run(self, feats: list[np.ndarray], lengths: np.ndarray):
        """[batch, frames', X] acoustic frames (CTC log-probs, or a transducer encoder's outputs
        turned frames-first) and each row's valid frames; a graph without length masks (NeMo's
        convolutional encoders) runs one unpadded utterance at a time."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if not self.padded:
            rows = [self._frames_first(self.session.run([self.output], self._feeds(f[None, :, :n], np.array([n])))[0])[0]
                    for f, n in zip(feats, lengths)]
            out = np.zeros((len(rows), max(len(r) for r in rows), rows[0].shape[-1]), dtype=np.float32)
            for i, r in enumerate(rows):
                out[i, :len(r)] = r
            return out, encoded_lengths(lengths, self.layers)
        longest = max(f.shape[-1] for f in feats)
        batch = np.zeros((len(feats), feats[0].shape[0], longest), dtype=np.float32)
        for i, f in enumerate(feats):
            batch[i, :, :f.shape[-1]] = f
        (acoustic,) = self.session.run([self.output], self._feeds(batch, lengths))
        return self._frames_first(acoustic), encoded_lengths(lengths, self.layers)

    def _frames_first(self, acoustic: np.ndarray) -> np.ndarray:
        return acoustic.transpose(0, 2, 1) if self.transducer else acoustic

    def _transcript(self, logprobs: np.ndarray, frames: int):
        """The text, and each word with its start and end in milliseconds and its confidence (from the best path)."""
        words = [(w, round(a * self.frame_ms), round(b * self.frame_ms), round(c, 4))
                 for w, a, b, c in ctc_greedy_words(logprobs, frames, self.vocabulary)]
        return _text(ctc_greedy(logprobs, frames, self.vocabulary), words)

    def _searched(self, hypothesis):
        """A transducer search's text and words: a word spans its tokens' frames (a TDT token its
        predicted duration, an RNNT token one frame); its confidence is its tokens' mean probability."""
        spans = [(t, f, f + d) for t, f, d in zip(hypothesis.tokens, hypothesis.frames, hypothesis.durations)]
        probabilities = hypothesis.probabilities
        words = [(w, round(a * self.frame_ms), round(b * self.frame_ms),
                  round(float(np.mean([probabilities[k] for k in members])), 4))
                 for w, a, b, members in words_of(spans, self.vocabulary)]
        return _text(self.vocabulary.text(hypothesis.tokens), words)

    def _feeds(self, signal: np.ndarray, lengths: np.ndarray) -> dict:
        feeds = {"audio_signal": signal}
        if self.takes_length:
            feeds["length"] = lengths.reshape(-1, 1) if self.bls else lengths
        return feeds


def _open_search(spec: dict, workspace: Path):
    """The transducer search over the decoder-joint graph, on onnxruntime with one thread: its steps
    are a few rows each, so the cost is the call, and the encoder keeps the other cores."""
    import onnxruntime as ort
    from runners import session_options

    from nimbuild.serving.transducer import TransducerDecoder

    options = session_options(threads=1)
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(workspace / spec["graph"]), options, providers=["CPUExecutionProvider"])
    return TransducerDecoder(session, int(spec["blank"]), spec.get("durations") or None, spec.get("max_symbols"),
                             [tuple(shape) for shape in spec["states"]])


def _text(text: str, words: list):
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor("text", np.array([[text.encode()]], dtype=np.object_)),
        pb_utils.Tensor("words", np.array([[json.dumps(words).encode()]], dtype=np.object_))])


def _error(message: str):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
