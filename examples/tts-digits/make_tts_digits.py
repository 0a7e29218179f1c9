"""Train examples/tts-digits/tts-digits.nemo: a tiny NeMo FastPitch that speaks digits and the commands
the asr-digits example hears, trained on CPU in minutes on speech synthesised with espeak-ng. It
is the text-to-speech example (examples/tts-digits/recipe.yaml) and a test fixture; nothing is downloaded.

FastPitch predicts a mel spectrogram from characters; the example's vocoder is Griffin-Lim
(nimbuild/serving/griffin_lim.py), not a neural one: a HiFiGAN does not train to intelligibility on two
cores in minutes. The profile names the vocoder it carries.

Durations come from how the training audio is made, not from an aligner: every word is spoken on
its own by espeak-ng, and an utterance is its words' clips joined end to end, so each word's
frames are known; they are shared evenly among its characters (a space between words lasts none). NeMo's FastPitch without
`learn_alignment` trains from such durations. Its pitch target is left at zero: without the
aligner, NeMo 3.0 averages the pitch target over the *predicted* durations, so a real pitch
contour would be misaligned; the example voice has one espeak-ng pitch anyway.

The script ends by measuring intelligibility as the tests do: held-out sentences (none in the
training text) -> FastPitch -> Griffin-Lim -> 16 kHz -> the asr-digits model's transcribe() ->
word error rate. Run from the repository root (needs the `nemo` extra and espeak-ng):

    python examples/tts-digits/make_tts_digits.py [--minutes 8] [DEST.nemo]

`--language de` trains the German twin (examples/tts-digits-de/tts-digits-de.nemo, espeak-ng's `de`
voice) on the German of those sentences as the translation example makes it (examples/nmt-en-de/nmt_phrases.py:
"rufe fünf fünf eins an"), the last stage of the speech-to-speech demo. Its alphabet is the same
a-z: NeMo's parser reads "fünf" as "funf", and so does the runtime, while espeak-ng spoke "fünf".
No German ASR model exists here, so its intelligibility is not measured; the script says so.
"""

from __future__ import annotations

import argparse
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples" / "asr-digits"))
sys.path.insert(0, str(ROOT / "examples" / "nmt-en-de"))

import make_asr_digits  # noqa: E402  the words the ASR example hears
import nmt_phrases  # noqa: E402  their German, as the translation example says them
from make_asr_digits import word_error_rate  # noqa: E402

SAMPLE_RATE = 22050
HOP, WINDOW, MELS = 256, 1024, 80
SPEED, PITCH = 150, 45  # one espeak-ng speaker: the example's one voice
# language -> (espeak-ng voice, the words it speaks, a sentence of them from a seeded Random)
LANGUAGES = {
    "en": ("en-us", make_asr_digits.DIGITS + make_asr_digits.COMMANDS, make_asr_digits.sentence),
    "de": ("de", [*nmt_phrases.DIGITS.values(), *nmt_phrases.COMMANDS.values(), "rufe", "wähle"],
           lambda rng: nmt_phrases.spoken_pair(rng)[1]),
}
VOICE, WORDS, sentence = LANGUAGES["en"]
# frames of silence added between words, beyond each clip's own 12 ms margins: asr-digits runs words
# together across longer pauses (held-out WER of the joined espeak-ng audio itself: 5% at 0, 22% at 3,
# 36% at 4 frames), so none
PAUSE_FRAMES = 0
LABELS = [" ", *"abcdefghijklmnopqrstuvwxyz", "'"]
TRAIN_SEED, HELD_OUT_SEED = 7, 1234


def training_sentences(count: int = 4000) -> list[str]:
    rng = random.Random(TRAIN_SEED)
    return [sentence(rng) for _ in range(count)]


def held_out_sentences(count: int = 40) -> list[str]:
    """Sentences of the same words that training never saw (the round trip's test set)."""
    seen = set(training_sentences())
    rng, out = random.Random(HELD_OUT_SEED), []
    while len(out) < count:
        text = sentence(rng)
        if text not in seen and len(text.split()) >= 2:
            out.append(text)
    return out


def word_clips(workdir: Path) -> dict:
    """Each word spoken alone, its silence trimmed to a whole number of hops."""
    import numpy as np
    import soundfile

    clips = {}
    for word in dict.fromkeys(WORDS):
        path = workdir / f"{word}.wav"
        subprocess.run(["espeak-ng", "-v", VOICE, "-s", str(SPEED), "-p", str(PITCH), "-w", str(path), word],
                       check=True, capture_output=True)
        audio, rate = soundfile.read(str(path), dtype="float32")
        assert rate == SAMPLE_RATE, rate
        loud = np.flatnonzero(np.abs(audio) > 0.002)
        audio = audio[max(0, loud[0] - HOP): loud[-1] + HOP]
        clips[word] = np.pad(audio, (0, -len(audio) % HOP))
    return clips


def utterance(text: str, clips: dict):
    """(audio, per-character durations in frames) for a sentence of known words."""
    import numpy as np

    pieces, durations = [], []
    for k, word in enumerate(text.split()):
        if k:
            pieces.append(np.zeros(PAUSE_FRAMES * HOP, np.float32))
            durations.append(PAUSE_FRAMES)
        frames = len(clips[word]) // HOP
        share = [frames // len(word) + (1 if i < frames % len(word) else 0) for i in range(len(word))]
        pieces.append(clips[word])
        durations.extend(share)
    durations[-1] += 1  # a centred STFT has one frame more than hops
    return np.concatenate(pieces), durations


def model_config():
    from omegaconf import OmegaConf

    d = 96  # small enough to train in minutes on two cores: 1.4 s a step at 128 wide, 3 + 3 layers
    fft = {"n_head": 1, "d_model": d, "d_head": 64, "d_inner": 384, "kernel_size": 3, "dropout": 0.1,
           "dropatt": 0.1, "dropemb": 0.0}
    predictor = {"_target_": "nemo.collections.tts.modules.fastpitch.TemporalPredictor", "input_size": d,
                 "kernel_size": 3, "filter_size": 96, "dropout": 0.1, "n_layers": 2}
    return OmegaConf.create({
        "labels": LABELS, "learn_alignment": False, "n_speakers": 1, "symbols_embedding_dim": d,
        "pitch_embedding_kernel_size": 3, "max_token_duration": 75, "n_mel_channels": MELS,
        "sample_rate": SAMPLE_RATE,
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                         "features": MELS, "lowfreq": 0, "highfreq": 8000, "n_fft": WINDOW, "n_window_size": WINDOW,
                         "window_size": False, "n_window_stride": HOP, "window_stride": False, "pad_to": 1,
                         "pad_value": 0, "sample_rate": SAMPLE_RATE, "window": "hann", "normalize": None,
                         "preemph": None, "dither": 0.0, "frame_splicing": 1, "log": True,
                         "log_zero_guard_type": "add", "log_zero_guard_value": 1.0e-5, "mag_power": 1.0},
        "input_fft": {"_target_": "nemo.collections.tts.modules.transformer.FFTransformerEncoder", "n_layer": 2,
                      **fft, "d_embed": d, "n_embed": len(LABELS) + 1, "padding_idx": len(LABELS)},
        "output_fft": {"_target_": "nemo.collections.tts.modules.transformer.FFTransformerDecoder", "n_layer": 2, **fft},
        "duration_predictor": predictor, "pitch_predictor": predictor,
    })


def batch(texts: list[str], clips: dict, parse):
    import torch

    audio, durs, tokens = zip(*[(*utterance(t, clips), parse(t)) for t in texts])
    longest, chars = max(len(a) for a in audio), max(len(t) for t in tokens)
    signal = torch.zeros(len(texts), longest)
    text = torch.full((len(texts), chars), len(LABELS), dtype=torch.long)
    dur = torch.zeros(len(texts), chars, dtype=torch.long)
    for i, (a, d, t) in enumerate(zip(audio, durs, tokens)):
        assert len(d) == len(t), (texts[i], len(d), len(t))
        signal[i, :len(a)] = torch.from_numpy(a)
        text[i, :len(t)] = torch.tensor(t)
        dur[i, :len(d)] = torch.tensor(d)
    return signal, torch.tensor([len(a) for a in audio]), text, torch.tensor([len(t) for t in tokens]), dur


def train(model, clips: dict, minutes: float, batch_size: int = 12) -> None:
    import torch

    texts = training_sentences()
    parse = model.parser
    peak, warmup = 1e-3, 200
    optimiser = torch.optim.AdamW(model.parameters(), lr=peak, weight_decay=1e-6)
    rng = random.Random(0)
    model.train()
    start, step = time.monotonic(), 0
    while (done := (time.monotonic() - start) / (minutes * 60)) < 1:
        # warm up, then a cosine decay over the time budget (the step count is not known ahead)
        for group in optimiser.param_groups:
            group["lr"] = peak * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * done))
        signal, lengths, text, text_lens, durs = batch(rng.sample(texts, batch_size), clips, parse)
        mels, _ = model.preprocessor(input_signal=signal, length=lengths)
        # zeros long enough for NeMo to average over any predicted durations (see the module doc)
        pitch = torch.zeros(len(text), text.shape[1] * 75 + 1)
        out = model(text=text, durs=durs, pitch=pitch, pace=1.0, input_lens=text_lens)
        loss = (model.mel_loss_fn(spect_predicted=out[0], spect_tgt=mels)
                + model.duration_loss_fn(log_durs_predicted=out[3], durs_tgt=durs, len=text_lens)
                + model.pitch_loss_fn(pitch_predicted=out[4], pitch_tgt=out[9], len=text_lens))
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        step += 1
        if step % 100 == 0:
            print(f"step {step}  loss {loss.item():.3f}  {time.monotonic() - start:.0f} s", flush=True)
    model.eval()


def synthesise(model, texts: list[str]):
    """Each text through the trained model and Griffin-Lim, at 16 kHz (what asr-digits hears)."""
    import numpy as np
    import torch
    from scipy.signal import resample_poly

    from nimbuild.serving.griffin_lim import GriffinLim

    vocoder = GriffinLim(model.preprocessor.featurizer.fb[0].numpy(), n_fft=WINDOW, hop=HOP, guard=1.0e-5)
    out = []
    with torch.inference_mode():
        for text in texts:
            mel = model.generate_spectrogram(tokens=model.parse(text))[0].numpy()
            out.append(resample_poly(vocoder(mel), 320, 441).astype(np.float32))
    return out


def heard(asr_path: Path, audio: list) -> list[str]:
    """What the asr-digits model's own transcribe() hears in 16 kHz audio."""
    import soundfile
    from nemo.collections.asr.models import ASRModel

    asr = ASRModel.restore_from(str(asr_path), map_location="cpu").eval()
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, a in enumerate(audio):
            soundfile.write(f"{tmp}/{i}.wav", a, 16000)
            paths.append(f"{tmp}/{i}.wav")
        return [h.text if hasattr(h, "text") else h for h in asr.transcribe(paths, batch_size=8, verbose=False)]


def evaluate(model) -> float:
    """The held-out word error rate through asr-digits, with a few examples printed."""
    texts = held_out_sentences()
    got = heard(ROOT / "examples/asr-digits/asr-digits.nemo", synthesise(model, texts))
    for said, text in list(zip(texts, got))[:6]:
        print(f"  said {said!r:40} heard {text!r}")
    return word_error_rate(texts, got)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", nargs="?")
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--language", choices=sorted(LANGUAGES), default="en")
    args = parser.parse_args()
    global VOICE, WORDS, sentence
    VOICE, WORDS, sentence = LANGUAGES[args.language]
    suffix = "" if args.language == "en" else f"-{args.language}"
    args.dest = args.dest or str(ROOT / "examples" / f"tts-digits{suffix}" / f"tts-digits{suffix}.nemo")

    import torch
    from nemo.collections.tts.models import FastPitchModel

    torch.manual_seed(0)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        clips = word_clips(Path(tmp))
    model = FastPitchModel(cfg=model_config())
    print(f"FastPitch with {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; "
          f"{len(clips)} words spoken by espeak-ng {VOICE}")
    train(model, clips, args.minutes)
    model.save_to(args.dest)
    print(f"wrote {args.dest}")
    if args.language != "en":
        print(f"not measured: no {args.language} speech recognition model exists here to hear the voice back")
        return
    wer = evaluate(model)
    print(f"held-out word error rate through asr-digits: {wer:.1%} over {len(held_out_sentences())} sentences")


if __name__ == "__main__":
    main()
