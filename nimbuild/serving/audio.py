"""Speech front and back ends in numpy: what a served CTC model needs around its ONNX graph.

- `read_audio`: any WAV (or FLAC/OGG) soundfile reads, downmixed to mono and resampled to the
  model's rate with a polyphase filter (scipy's resample_poly).
- `FrontEnd`: NeMo's AudioToMelSpectrogramPreprocessor at inference (pre-emphasis, centred STFT
  with zero padding, power spectrum, the model's own mel filterbank, log with the zero guard,
  per-feature normalisation over the valid frames, zeroed padding), from the feature config the
  build wrote. The filterbank is NeMo's own (saved at build), so librosa is not needed to serve.
  Compute is float32, as NeMo's own (torch) preprocessor computes; the build checks the features
  against NeMo on real speech.
- `encoded_lengths`: how many encoder frames a CTC model emits for N feature frames (the exported
  graph returns log-probs only), from the subsampling layers the build recorded and checked.
- `ctc_greedy`: best path, repeats merged, blanks dropped, tokens joined into text.

Only numpy, scipy (FFT, resampling) and soundfile (decoding) are imported: this runs inside Triton.
"""

from __future__ import annotations

import functools
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

WINDOWS = {"hann": np.hanning, "hamming": np.hamming, "blackman": np.blackman, "bartlett": np.bartlett}
NORMALISE_FLOOR = 1e-5  # NeMo's CONSTANT, added to the standard deviation


class AudioError(ValueError):
    """Audio that cannot be read or is unusable; the message is fit for a 400 response."""


def read_audio(data: bytes, sample_rate: int, max_seconds: float | None = None) -> np.ndarray:
    """Decode audio bytes to mono float32 at `sample_rate`."""
    import soundfile

    try:
        audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, TypeError for junk
        raise AudioError(f"cannot read the audio file ({str(e).strip() or type(e).__name__}); send WAV, FLAC or OGG") from None
    if audio.shape[0] == 0:
        raise AudioError("the audio file holds no samples")
    if max_seconds is not None and audio.shape[0] / rate > max_seconds:
        raise AudioError(f"the audio is {audio.shape[0] / rate:.1f} s long; this model takes at most {max_seconds:.1f} s")
    return resample(audio.mean(axis=1), rate, sample_rate)


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return np.ascontiguousarray(audio, dtype=np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(int(rate), int(target))
    up, down = target // g, rate // g
    audio = np.asarray(audio, dtype=np.float32)
    return resample_poly(audio, up, down, window=_lowpass(up, down)).astype(np.float32, copy=False)


@functools.lru_cache(maxsize=16)
def _lowpass(up: int, down: int) -> np.ndarray:
    """The FIR filter resample_poly designs by default (Kaiser, beta 5, 10 zero crossings each side),
    made once per rate pair: designing it on every call was a quarter of resampling a short clip."""
    from scipy.signal import firwin

    half = 10 * max(up, down)
    taps = firwin(2 * half + 1, 1.0 / max(up, down), window=("kaiser", 5.0)).astype(np.float32)
    taps.flags.writeable = False  # shared by every call; resample_poly copies it before scaling
    return taps


class StreamResampler:
    """Resamples audio that arrives in pieces so that the pieces out, joined, equal resampling the
    whole recording at once (what the offline endpoint does), at a cost per piece that does not
    grow with the stream. Each push resamples only a tail of the input: it starts on a multiple of
    the rate ratio's denominator (so its outputs fall on the whole recording's output grid) and far
    enough back that every output released has the polyphase filter's full support (about 10
    output samples either side) inside it. The last HOLD outputs depend on input still to come, so
    they are kept back until the end."""

    HOLD = 64

    def __init__(self, rate: int, target: int):
        self.rate, self.target = int(rate), int(target)
        g = math.gcd(self.rate, self.target)
        self.up, self.down = self.target // g, self.rate // g
        self.tail = np.zeros(0, dtype=np.float32)
        self.base = 0  # the input index of tail[0], a multiple of `down`
        self.sent = 0  # outputs released so far

    def push(self, samples: np.ndarray, final: bool = False) -> np.ndarray:
        if self.rate == self.target:
            return np.asarray(samples, dtype=np.float32)
        self.tail = np.concatenate([self.tail, np.asarray(samples, dtype=np.float32)])
        if not len(self.tail):
            return np.zeros(0, np.float32)
        window = resample(self.tail, self.rate, self.target)
        first = self.base // self.down * self.up  # the whole recording's output index of window[0]
        upto = first + len(window) if final else max(self.sent, first + len(window) - self.HOLD)
        out = window[self.sent - first:upto - first]
        self.sent = upto
        # keep input from 2 x HOLD outputs before what is released next, on the denominator's grid
        keep_from = max(0, (self.sent - 2 * self.HOLD) * self.down // self.up) // self.down * self.down
        if keep_from > self.base:
            self.tail, self.base = self.tail[keep_from - self.base:], keep_from
        return out


def feature_config(preprocessor_config: dict[str, Any], featurizer) -> dict[str, Any]:
    """The front end's settings, as the build records them (from NeMo's module, not guessed)."""
    normalize = preprocessor_config.get("normalize", "per_feature")
    return {
        "sample_rate": int(featurizer.sample_rate),
        "n_fft": int(featurizer.n_fft),
        "win_length": int(featurizer.win_length),
        "hop_length": int(featurizer.hop_length),
        "window": preprocessor_config.get("window", "hann"),
        "preemph": featurizer.preemph,
        "exact_pad": bool(featurizer.exact_pad),
        "mag_power": float(featurizer.mag_power),
        "log": bool(featurizer.log),
        "log_zero_guard_type": featurizer.log_zero_guard_type,
        "log_zero_guard_value": float(featurizer.log_zero_guard_value_fn(featurizer.fb)),
        "normalize": normalize if normalize in ("per_feature", "all_features") else None,
        "pad_value": float(featurizer.pad_value),
        "features": int(featurizer.fb.shape[-2]),
        "filterbank": "asr/filterbank.npy",
    }


class FrontEnd:
    def __init__(self, config: dict[str, Any], filterbank: np.ndarray):
        self.config = config
        self.hop = int(config["hop_length"])
        self.n_fft = int(config["n_fft"])
        self.fb = filterbank.astype(np.float32)
        window = WINDOWS[config["window"]](int(config["win_length"])) if config.get("window") in WINDOWS \
            else np.ones(int(config["win_length"]))
        left = (self.n_fft - len(window)) // 2  # torch.stft centres a short window in n_fft
        self.window = np.zeros(self.n_fft, np.float32)
        self.window[left:left + len(window)] = window

    @classmethod
    def load(cls, config: dict[str, Any], root: Path) -> "FrontEnd":
        return cls(config, np.load(root / config["filterbank"], allow_pickle=False))

    def frames(self, samples: int) -> int:
        """Valid feature frames for `samples` samples (NeMo's get_seq_len)."""
        pad = (self.n_fft - self.hop) // 2 * 2 if self.config.get("exact_pad") else self.n_fft // 2 * 2
        return max((samples + pad - self.n_fft) // self.hop, 0)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        """[features, frames] float32 for one utterance."""
        c = self.config
        x = np.asarray(audio, dtype=np.float32)
        valid = self.frames(len(x))
        if c.get("exact_pad"):
            pad = (self.n_fft - self.hop) // 2
            x = np.pad(x, (pad, pad))
        if c.get("preemph") is not None:
            x = np.concatenate([x[:1], x[1:] - float(c["preemph"]) * x[:-1]])
        if not c.get("exact_pad"):
            x = np.pad(x, (self.n_fft // 2, self.n_fft // 2))
        from numpy.lib.stride_tricks import sliding_window_view
        from scipy.fft import rfft  # numpy's rfft works in float64 whatever it is given: 2x slower here

        count = 1 + (len(x) - self.n_fft) // self.hop
        windows = sliding_window_view(x, self.n_fft)[::self.hop][:count]  # frames as views, not copies
        spectrum = _power(rfft(windows * self.window, axis=1), float(c.get("mag_power", 2.0)))
        feats = self.fb @ spectrum.T  # [features, frames]
        if c.get("log"):
            guard = float(c["log_zero_guard_value"])
            feats = np.log(feats + guard) if c.get("log_zero_guard_type", "add") == "add" else np.log(np.maximum(feats, guard))
        feats = _normalise(feats, valid, c.get("normalize"))
        feats[:, valid:] = float(c.get("pad_value", 0.0))
        return feats.astype(np.float32)


def _power(spectrum: np.ndarray, power: float) -> np.ndarray:
    """|X| ** power in float32; the usual power 2 as re^2 + im^2, without a square root to undo."""
    if power == 2.0:
        return (spectrum.real ** 2 + spectrum.imag ** 2).astype(np.float32, copy=False)
    return (np.abs(spectrum) ** power).astype(np.float32, copy=False)


def _normalise(feats: np.ndarray, valid: int, kind: str | None) -> np.ndarray:
    if kind is None or valid == 0:
        return feats
    part = feats[:, :valid]
    if kind == "per_feature":
        mean = part.mean(axis=1, keepdims=True)
        std = part.std(axis=1, ddof=1, keepdims=True) if valid > 1 else np.zeros_like(mean)
    else:
        mean, std = part.mean(), (part.std(ddof=1) if part.size > 1 else 0.0)
    return (feats - mean) / (np.nan_to_num(std) + NORMALISE_FLOOR)


def encoded_lengths(frames: np.ndarray, layers: list[dict[str, Any]]) -> np.ndarray:
    """Frames after the encoder's subsampling: each layer is (L + padding - kernel) / stride + 1,
    rounded down (or up, for ceil-mode layers)."""
    lengths = np.asarray(frames, dtype=np.float64)
    for layer in layers:
        lengths = (lengths + layer["padding"] - layer["kernel"]) / layer["stride"] + 1.0
        lengths = np.ceil(lengths) if layer.get("ceil") else np.floor(lengths)
    return np.maximum(lengths, 0).astype(np.int64)


class Vocabulary:
    """Token ids to text: characters (joined as they are) or sentencepiece pieces ('▁' is a space)."""

    def __init__(self, tokens: list[str], kind: str):
        self.tokens, self.kind = tokens, kind
        self.blank = len(tokens)  # NeMo's CTC decoders put the blank last

    @classmethod
    def load(cls, path: Path) -> "Vocabulary":
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(list(data["tokens"]), data["kind"])

    def text(self, ids: list[int]) -> str:
        pieces = "".join(self.tokens[i] for i in ids if 0 <= i < len(self.tokens))
        if self.kind == "sentencepiece":
            return pieces.replace("\u2581", " ").strip()
        return pieces.strip()


def ctc_greedy(logprobs: np.ndarray, length: int, vocabulary: Vocabulary) -> str:
    """Best path over the first `length` frames of one utterance's [frames, vocab+1] log-probs."""
    best = logprobs[:length].argmax(axis=-1)
    keep = np.ones(len(best), dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    return vocabulary.text([int(t) for t in best[keep] if t != vocabulary.blank])


def ctc_greedy_words(logprobs: np.ndarray, length: int, vocabulary: Vocabulary) -> list[tuple[str, int, int, float]]:
    """The best path's words with the encoder frames they span and a confidence: (word, first
    frame, frame after the last, confidence). A token occupies the frames of its run; a word runs
    from its first token's first frame to its last token's last frame (blanks between words belong
    to neither). The confidence is the mean posterior of the best path over the word's frames."""
    best = logprobs[:length].argmax(axis=-1)
    posterior = np.exp(logprobs[:length].max(axis=-1))  # the graph's outputs are log-softmax
    spans = []
    t = 0
    while t < len(best):
        token, run_end = int(best[t]), t + 1
        while run_end < len(best) and best[run_end] == token:
            run_end += 1
        if token != vocabulary.blank:
            spans.append((token, t, run_end))
        t = run_end
    return [(word, start, end, float(posterior[start:end].mean())) for word, start, end, _ in words_of(spans, vocabulary)]


def words_of(spans: list[tuple[int, int, int]], vocabulary: Vocabulary) -> list[tuple[str, int, int, list[int]]]:
    """Emitted tokens (id, first frame, frame after it) grouped into words: (word, first frame,
    frame after the last, indices of its tokens). A space token or a sentencepiece '▁' starts a word."""
    words: list[tuple[str, int, int, list[int]]] = []
    pieces: list[str] = []
    members: list[int] = []
    start = end = 0
    for index, (token, first, after) in enumerate(spans):
        if not 0 <= token < len(vocabulary.tokens):
            continue
        piece = vocabulary.tokens[token]
        boundary = piece == " " or (vocabulary.kind == "sentencepiece" and piece.startswith("\u2581"))
        if boundary and pieces:
            words.append(("".join(pieces), start, end, members))
            pieces, members = [], []
        piece = piece.replace("\u2581", "") if vocabulary.kind == "sentencepiece" else piece.strip()
        if piece:
            if not pieces:
                start = first
            pieces.append(piece)
            members.append(index)
            end = after
    if pieces:
        words.append(("".join(pieces), start, end, members))
    return words


def subsampling_factor(runtime: dict[str, Any]) -> int:
    """Feature frames per encoder frame: the product of the subsampling layers' strides."""
    return math.prod(int(layer["stride"]) for layer in runtime["subsampling"])


def frame_seconds(runtime: dict[str, Any]) -> float:
    """Seconds per encoder frame: the feature hop times the subsampling strides."""
    return int(runtime["features"]["hop_length"]) * subsampling_factor(runtime) / int(runtime["sample_rate"])
