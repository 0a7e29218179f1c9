"""Train examples/asr-digits/asr-digits.nemo: a tiny Conformer-CTC that hears spoken digits and a few
commands, trained on CPU in minutes on speech synthesised with espeak-ng. It is the speech example
(examples/asr-digits/recipe.yaml) and a test fixture; nothing is downloaded.

The training set uses some espeak-ng voices, variants and speeds; the held-out set uses voices,
variants and speeds it never heard, and the script reports the held-out word error rate measured
with NeMo's own transcribe(). Run from the repository root (needs the `nemo` extra and espeak-ng):

    python examples/asr-digits/make_asr_digits.py [--minutes 12] [DEST.nemo]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SAMPLE_RATE = 16000
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "oh"]
COMMANDS = ["call", "dial", "stop", "go", "yes", "no", "up", "down", "left", "right", "on", "off", "cancel", "repeat"]
LABELS = [" ", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r", "s",
          "t", "u", "v", "w", "x", "y", "z", "'"]

# What training hears, and what it never hears (the held-out set): voices, variants and speeds.
# Variants are espeak-ng's speaker settings (formants, pitch, breathiness); many of them is what
# makes the model hear a voice it was not trained on. Robotic and whispering variants are left out.
TRAIN_VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan"]
TRAIN_VARIANTS = ["", "+m1", "+m2", "+m3", "+m4", "+m6", "+m7", "+f1", "+f2", "+f3", "+f5", "+klatt", "+klatt2",
                  "+klatt4", "+Alex", "+Andy", "+Annie", "+Denis", "+Gene", "+Jacky", "+Lee", "+Mike", "+Michael",
                  "+benjamin", "+caleb", "+david", "+ed", "+edward", "+iven", "+john", "+max", "+michel", "+norbert",
                  "+pablo", "+quincy", "+rob", "+robert", "+steph", "+travis", "+victor", "+zac", "+aunty",
                  "+belinda", "+grandma", "+grandpa", "+shelby", "+anika"]
TRAIN_SPEEDS = [120, 135, 150, 165, 185, 205, 225]
HELD_OUT_VOICES = ["en-gb-x-gbcwmd", "en-us-nyc"]
HELD_OUT_VARIANTS = ["+m5", "+f4", "+klatt3", "+adam", "+linda", "+paul", "+iven2", "+steph2"]
HELD_OUT_SPEEDS = [128, 158, 195, 215]


def sentence(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.55:
        return " ".join(rng.choice(DIGITS) for _ in range(rng.randint(1, 6)))
    if kind < 0.8:
        return " ".join(rng.choice(COMMANDS) for _ in range(rng.randint(1, 3)))
    return rng.choice(["call", "dial"]) + " " + " ".join(rng.choice(DIGITS) for _ in range(rng.randint(2, 5)))


def speak(text: str, voice: str, speed: int, pitch: int, path: Path) -> None:
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
                   check=True, capture_output=True)


def load_16k(path: Path):
    """espeak-ng writes 22.05 kHz mono; the model hears 16 kHz float32."""
    import numpy as np
    import soundfile
    from scipy.signal import resample_poly

    audio, rate = soundfile.read(str(path), dtype="float32")
    from math import gcd

    g = gcd(rate, SAMPLE_RATE)
    return resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)


def synthesise(count: int, voices, variants, speeds, seed: int, workdir: Path) -> list[tuple[str, object]]:
    rng = random.Random(seed)
    jobs = []
    for i in range(count):
        voice = rng.choice(voices) + rng.choice(variants)
        jobs.append((sentence(rng), voice, rng.choice(speeds), rng.randint(30, 70), workdir / f"{seed}-{i}.wav"))
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda job: speak(*job), jobs))
    return [(text, load_16k(path)) for text, _, _, _, path in jobs]


def config(labels: list[str]) -> dict:
    features = 64
    return {
        "sample_rate": SAMPLE_RATE,
        "labels": labels,
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": SAMPLE_RATE, "normalize": "per_feature", "window_size": 0.025, "window_stride": 0.01,
            "window": "hann", "features": features, "n_fft": 512, "log": True, "frame_splicing": 1,
            "dither": 1e-5, "pad_to": 0, "pad_value": 0.0,
        },
        "spec_augment": {
            "_target_": "nemo.collections.asr.modules.SpectrogramAugmentation",
            "freq_masks": 2, "time_masks": 2, "freq_width": 8, "time_width": 0.05,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": features, "feat_out": -1, "n_layers": 3, "d_model": 96,
            "subsampling": "striding", "subsampling_factor": 4, "subsampling_conv_channels": 96,
            "ff_expansion_factor": 2, "self_attention_model": "rel_pos", "n_heads": 4,
            "att_context_size": [-1, -1], "xscaling": True, "untie_biases": True, "pos_emb_max_len": 5000,
            "conv_kernel_size": 15, "conv_norm_type": "batch_norm",
            "dropout": 0.1, "dropout_pre_encoder": 0.1, "dropout_emb": 0.0, "dropout_att": 0.1,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.ConvASRDecoder",
            "feat_in": 96, "num_classes": len(labels), "vocabulary": labels,
        },
        "optim": {"name": "adamw", "lr": 2e-3, "weight_decay": 1e-3},
    }


def augment(audio, rng):
    """Gain, a little noise and silence around the speech: espeak-ng is otherwise too clean."""
    import numpy as np

    audio = audio * rng.uniform(0.3, 1.0)
    lead, tail = (np.zeros(rng.randint(0, 4000), np.float32) for _ in range(2))
    audio = np.concatenate([lead, audio, tail])
    noise = rng.uniform(0.0, 0.01) * np.random.default_rng(rng.randint(0, 2**31)).standard_normal(len(audio))
    return (audio + noise).astype(np.float32)


def batches(data, size: int, rng: random.Random):
    order = sorted(range(len(data)), key=lambda i: len(data[i][1]))  # similar lengths together: less padding
    groups = [order[i:i + size] for i in range(0, len(order), size)]
    rng.shuffle(groups)
    return groups


def collate(data, indices, labels, rng):
    import numpy as np
    import torch

    audios = [augment(data[i][1], rng) for i in indices]
    texts = [[labels.index(c) for c in data[i][0]] for i in indices]
    signal = np.zeros((len(audios), max(map(len, audios))), np.float32)
    for row, audio in enumerate(audios):
        signal[row, :len(audio)] = audio
    target = np.zeros((len(texts), max(map(len, texts))), np.int64)
    for row, text in enumerate(texts):
        target[row, :len(text)] = text
    return (torch.from_numpy(signal), torch.tensor([len(a) for a in audios]),
            torch.from_numpy(target), torch.tensor([len(t) for t in texts]))


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    errors = words = 0
    for ref, hyp in zip(references, hypotheses):
        r, h = ref.split(), hyp.split()
        row = list(range(len(h) + 1))
        for i in range(1, len(r) + 1):
            prev, row[0] = row[0], i
            for j in range(1, len(h) + 1):
                prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r[i - 1] != h[j - 1]))
        errors += row[len(h)]
        words += len(r)
    return errors / max(words, 1)


def transcribe(model, data, workdir: Path) -> list[str]:
    import soundfile

    paths = []
    for i, (_, audio) in enumerate(data):
        path = workdir / f"eval-{i}.wav"
        soundfile.write(str(path), audio, SAMPLE_RATE)
        paths.append(str(path))
    out = model.transcribe(paths, batch_size=16, verbose=False)
    return [h.text if hasattr(h, "text") else h for h in out]


def ctc_loss(model, signal, length, target, target_length):
    log_probs, encoded_len, _ = model(input_signal=signal, input_signal_length=length)
    return model.loss(log_probs=log_probs, targets=target, input_lengths=encoded_len, target_lengths=target_length)


def new_ctc_model():
    from nemo.collections.asr.models import EncDecCTCModel
    from omegaconf import OmegaConf

    return EncDecCTCModel(cfg=OmegaConf.create(config(LABELS)))


def fit(model, batch_loss, transcribe_clips, train_set, held_out, minutes: float, rng: random.Random, t0: float, *,
        lr: float, batch: int, warmup: int, weight_decay: float) -> None:
    """The speech examples' training loop (CTC, RNNT, Whisper, Canary): AdamW on `batch_loss(indices)`
    over batches of similar lengths for `minutes`, the learning rate warmed up over `warmup` steps
    then decayed with the time left, the gradient clipped at 1; after each epoch the word error rate
    of `transcribe_clips(utterances)` on the first 60 held-out utterances."""
    import torch

    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    deadline, step, epoch = time.time() + minutes * 60, 0, 0
    while time.time() < deadline:
        epoch += 1
        model.train()
        losses = []
        for indices in batches(train_set, batch, rng):
            value = batch_loss(indices)
            optimiser.zero_grad()
            value.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            step += 1
            for group in optimiser.param_groups:  # warm up, then decay with the time left
                left = max(deadline - time.time(), 0) / (minutes * 60)
                group["lr"] = lr * min(1.0, step / warmup) * max(left, 0.05)
            optimiser.step()
            losses.append(value.item())
            if time.time() > deadline:
                break
        model.eval()
        wer = word_error_rate([t for t, _ in held_out[:60]], transcribe_clips(held_out[:60]))
        print(f"epoch {epoch}: step {step} loss {sum(losses) / len(losses):.3f} held-out WER {wer:.3f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    model.eval()


def train(minutes: float, dest: Path, seed: int = 7, new_model=new_ctc_model, loss=ctc_loss, check=None) -> None:
    """Synthesise the speech, train `new_model()` on `loss` for `minutes`, report the held-out WER
    and save; `check(model, train_set, rng)` runs once before training (the RNNT script checks its loss)."""
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        t0 = time.time()
        train_set = synthesise(6000, TRAIN_VOICES, TRAIN_VARIANTS, TRAIN_SPEEDS, seed, workdir)
        held_out = synthesise(200, HELD_OUT_VOICES, HELD_OUT_VARIANTS, HELD_OUT_SPEEDS, seed + 1, workdir)
        hours = sum(len(a) for _, a in train_set) / SAMPLE_RATE / 3600
        print(f"synthesised {len(train_set)} training utterances ({hours:.2f} h) and {len(held_out)} held-out "
              f"in {time.time() - t0:.0f} s", flush=True)
        model = new_model()
        print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
        if check is not None:
            model.eval()
            check(model, train_set, rng)
        fit(model, lambda indices: loss(model, *collate(train_set, indices, LABELS, rng)),
            lambda clips: transcribe(model, clips, workdir), train_set, held_out, minutes, rng, t0,
            lr=2e-3, batch=24, warmup=200, weight_decay=1e-3)
        model.eval()
        hypotheses = transcribe(model, held_out, workdir)
        wer = word_error_rate([t for t, _ in held_out], hypotheses)
        print(f"held-out WER (voices {', '.join(HELD_OUT_VOICES)}, variants {', '.join(HELD_OUT_VARIANTS)}, "
              f"speeds {HELD_OUT_SPEEDS}; {len(held_out)} utterances): {wer:.3f}", flush=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        model.save_to(str(dest))
        print(f"wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", nargs="?", default="examples/asr-digits/asr-digits.nemo", type=Path)
    parser.add_argument("--minutes", type=float, default=14.0, help="training time budget")
    args = parser.parse_args()
    train(args.minutes, args.dest)


if __name__ == "__main__":
    sys.exit(main())
