"""Whisper's front end in numpy: 16 kHz audio -> the log-mel features its encoder takes, as
transformers' WhisperFeatureExtractor computes them (checked against it at every build): the clip
zero-padded to the window (the extractor's chunk: 30 s in OpenAI's), a periodic Hann STFT centred
with reflect padding, the power spectrum through the checkpoint's own mel filterbank (recorded by
the build, not recomputed here), log10 with a 1e-10 floor, the last frame dropped, clamped to 8 below the clip's peak and
scaled by (x + 4) / 4."""

from __future__ import annotations

import numpy as np


def log_mel(audio: np.ndarray, filters: np.ndarray, n_fft: int, hop: int, window_samples: int) -> np.ndarray:
    """[mels, window_samples // hop] float32 features of one clip of at most `window_samples`."""
    signal = np.zeros(window_samples, np.float32)
    count = min(len(audio), window_samples)
    signal[:count] = audio[:count]
    padded = np.pad(signal, n_fft // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    spectrum = np.fft.rfft(frames * np.hanning(n_fft + 1)[:-1].astype(np.float32), axis=1)
    power = spectrum.real ** 2 + spectrum.imag ** 2
    log = np.log10(np.maximum(power @ filters, 1e-10)).T[:, :-1]
    log = np.maximum(log, log.max() - 8.0)
    return ((log + 4.0) / 4.0).astype(np.float32)


def batch_features(clips: list[np.ndarray], filters: np.ndarray, config: dict) -> np.ndarray:
    """[batch, mels, frames] features for the clips, each in its own window, from the `features`
    record the build wrote (n_fft, hop_length, window_samples)."""
    return np.stack([log_mel(c, filters, int(config["n_fft"]), int(config["hop_length"]), int(config["window_samples"]))
                     for c in clips])
