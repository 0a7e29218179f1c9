"""A non-neural vocoder: a log-mel spectrogram back to audio by Griffin-Lim phase reconstruction.

The text-to-speech example's vocoder (a HiFiGAN does not train to intelligibility on two cores in
minutes). It inverts the spectrogram generator's own front end: the mel filterbank is the one the
model was trained with (saved from NeMo's preprocessor into the profile), the log guard and the
STFT's size, window and hop are its preprocessor's. The magnitudes come from the filterbank's
pseudo-inverse, clipped at zero; the phase from the "fast" Griffin-Lim of Perraudin, Balazs and
Søndergaard (2013), with the momentum librosa uses.

The STFT pair is written here over scipy.fft, all frames in one call: scipy's ShortTimeFFT does one
FFT call per frame, and that was 1.3 s of the vocoder for 2 s of audio (32 iterations, 172 frames;
profiled). Frames are centred (zero padding), as NeMo's preprocessor lays them out, and the inverse
is the least-squares overlap-add (divided by the window's summed square).

numpy and scipy only: it runs inside Triton's Python backend, as nimbuild/serving/audio.py does.
"""

from __future__ import annotations

import numpy as np

ITERATIONS = 32
MOMENTUM = 0.99
PHASE_SEED = 0  # the first phase estimate is seeded: the same text gives the same audio


class GriffinLim:
    def __init__(self, filterbank: np.ndarray, n_fft: int, hop: int, guard: float, iterations: int = ITERATIONS,
                 win_length: int | None = None):
        from scipy.signal import get_window

        self.inverse = np.linalg.pinv(filterbank.astype(np.float64)).astype(np.float32)  # [bins, mels]
        self.guard, self.n_fft, self.hop, self.iterations = float(guard), int(n_fft), int(hop), int(iterations)
        win = int(win_length or n_fft)
        window = np.zeros(self.n_fft, np.float32)
        left = (self.n_fft - win) // 2  # a shorter window sits in the middle of the frame, as torch.stft puts it
        window[left:left + win] = get_window("hann", win)
        self.window = window
        self.parts = -(-self.n_fft // self.hop)  # hops per frame, rounded up

    def magnitudes(self, log_mel: np.ndarray) -> np.ndarray:
        """[bins, frames] linear magnitudes from a [mels, frames] log-mel spectrogram."""
        mel = np.maximum(np.exp(log_mel.astype(np.float32)) - self.guard, 0.0)
        return np.maximum(self.inverse @ mel, 0.0)

    def __call__(self, log_mel: np.ndarray) -> np.ndarray:
        """float32 audio, one hop per frame (a centred STFT's frame count less one, times the hop)."""
        magnitude = self.magnitudes(log_mel).T  # [frames, bins]
        frames = magnitude.shape[0]
        samples = max(1, (frames - 1) * self.hop)
        envelope = self._overlap_add(np.broadcast_to(self.window ** 2, (frames, self.n_fft)))
        envelope = np.where(envelope > 1e-8, envelope, 1.0)
        rng = np.random.default_rng(PHASE_SEED)
        angles = np.exp(2j * np.pi * rng.random(magnitude.shape)).astype(np.complex64)
        previous = np.zeros_like(angles)
        for _ in range(self.iterations):
            rebuilt = self._analyse(self._synthesise(magnitude * angles, envelope, samples), frames)
            angles = rebuilt - (MOMENTUM / (1 + MOMENTUM)) * previous
            angles /= np.maximum(np.abs(angles), 1e-16)
            previous = rebuilt
        return self._synthesise(magnitude * angles, envelope, samples).astype(np.float32)

    def _analyse(self, audio: np.ndarray, frames: int) -> np.ndarray:
        """[frames, bins]: frame t centred on sample t * hop, zero beyond the signal."""
        from numpy.lib.stride_tricks import sliding_window_view
        from scipy.fft import rfft

        half = self.n_fft // 2
        padded = np.zeros(max(len(audio) + 2 * half, (frames - 1) * self.hop + self.n_fft), np.float32)
        padded[half:half + len(audio)] = audio
        framed = sliding_window_view(padded, self.n_fft)[::self.hop][:frames]
        return rfft(framed * self.window, axis=-1).astype(np.complex64)

    def _synthesise(self, spectrum: np.ndarray, envelope: np.ndarray, samples: int) -> np.ndarray:
        from scipy.fft import irfft

        audio = self._overlap_add(irfft(spectrum, n=self.n_fft, axis=-1) * self.window) / envelope
        half = self.n_fft // 2
        return audio[half:half + samples]

    def _overlap_add(self, framed: np.ndarray) -> np.ndarray:
        """Frames [frames, n_fft] added at one hop apart: one vector add per hop in a frame."""
        frames = framed.shape[0]
        width = self.parts * self.hop
        if width != self.n_fft:
            framed = np.pad(framed, ((0, 0), (0, width - self.n_fft)))
        pieces = framed.reshape(frames, self.parts, self.hop)
        out = np.zeros((frames + self.parts - 1, self.hop), np.float32)
        for k in range(self.parts):
            out[k:k + frames] += pieces[:, k]
        return out.reshape(-1)
