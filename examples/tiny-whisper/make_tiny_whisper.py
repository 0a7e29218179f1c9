"""The Whisper example's model: a tiny random-weight `WhisperForConditionalGeneration` written by
transformers, with a byte-level tokenizer of Whisper's layout (256 byte tokens, then
`<|endoftext|>`, `<|startoftranscript|>`, language and task tokens, `<|notimestamps|>`), its feature
extractor and a generation config as OpenAI's checkpoints carry it (languages, tasks, suppressed
tokens). Nothing is downloaded. The tests write fresh ones with it.

    python examples/tiny-whisper/make_tiny_whisper.py   # writes examples/tiny-whisper/model
"""

from __future__ import annotations

from pathlib import Path

LANGUAGES = ("en", "de", "fr")
SPECIALS = ("<|endoftext|>", "<|startoftranscript|>", *(f"<|{code}|>" for code in LANGUAGES), "<|translate|>",
            "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-ins for the 256 bytes (byte-level BPE's alphabet)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in kept:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def write_tiny_whisper(path: Path, *, mels: int = 80, width: int = 64, layers: tuple[int, int] = (2, 2), heads: int = 4,
                       seed: int = 0, max_target: int = 64, multilingual: bool = True, std: float | None = 0.3,
                       window_seconds: int = 30, keep: str | None = None) -> Path:
    """`std`: the matrices' spread; at transformers' 0.02 a random Whisper repeats one token, at 0.3 its
    greedy transcripts vary, so the cache and the rules are exercised (None: transformers' own
    initialisation, to train from). `window_seconds`: the feature extractor's chunk (Whisper's 30 s;
    the trained example hears 6 s windows, as short commands need, and trains five times faster).
    `keep`: the characters generation may emit (the rest suppressed, as OpenAI's checkpoints suppress
    symbols); None suppresses every third byte, which a random model needs to exercise the rule."""
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer

    path.mkdir(parents=True, exist_ok=True)
    alphabet = _bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(256)}
    specials = SPECIALS if multilingual else tuple(s for s in SPECIALS if s[2:-2] not in (*LANGUAGES, "translate", "transcribe"))
    ids = {token: 256 + i for i, token in enumerate(specials)}
    vocab.update(ids)
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[], additional_special_tokens=list(specials[1:]))
    tokenizer.save_pretrained(path)
    extractor = WhisperFeatureExtractor(feature_size=mels, chunk_length=window_seconds)
    extractor.save_pretrained(path)
    eot, space = ids["<|endoftext|>"], vocab[alphabet[ord(" ")]]
    config = WhisperConfig(vocab_size=len(vocab), num_mel_bins=mels, d_model=width, encoder_layers=layers[0],
                           decoder_layers=layers[1], encoder_attention_heads=heads, decoder_attention_heads=heads,
                           encoder_ffn_dim=2 * width, decoder_ffn_dim=2 * width, max_target_positions=max_target,
                           max_source_positions=extractor.nb_max_frames // 2,
                           bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
                           decoder_start_token_id=ids["<|startoftranscript|>"])
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        for weight in model.parameters():
            if std is not None and weight.dim() >= 2:
                weight.normal_(0.0, std)
    generation = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], bos_token_id=eot, eos_token_id=eot, pad_token_id=eot,
        max_length=max_target, no_timestamps_token_id=ids["<|notimestamps|>"], is_multilingual=multilingual,
        suppress_tokens=list(range(1, 256, 3)) if keep is None else [b for b in range(256) if chr(b) not in keep],
        begin_suppress_tokens=[space, eot],
        **({"lang_to_id": {f"<|{c}|>": ids[f"<|{c}|>"] for c in LANGUAGES},
            "task_to_id": {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}} if multilingual else {}))
    model.generation_config = generation
    model.save_pretrained(path)
    return path


PROMPT = ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")
TRANSCRIPT_CHARACTERS = "abcdefghijklmnopqrstuvwxyz '"  # what the digits speech's transcripts are made of


def train(minutes: float, dest: Path, seed: int = 7) -> None:
    """A 6 s-window Whisper trained from scratch on the asr-digits example's espeak-ng speech (its
    voices, sentences, augmentation and held-out scoring), English transcription with Whisper's own
    prompt; the held-out word error rate printed at each epoch, by transformers' greedy generate."""
    import random
    import sys
    import tempfile
    import time

    import torch
    import transformers
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    transformers.logging.set_verbosity_error()  # generate's notes on max_length, once per batch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "asr-digits"))
    import make_asr_digits as data  # the CTC example's speech, augmentation and scoring

    torch.manual_seed(seed)
    rng = random.Random(seed)
    write_tiny_whisper(dest, width=96, layers=(2, 2), heads=4, max_target=48, std=None, window_seconds=6, seed=seed,
                       keep=TRANSCRIPT_CHARACTERS)
    processor = WhisperProcessor.from_pretrained(dest)
    model = WhisperForConditionalGeneration.from_pretrained(dest)
    prompt = processor.tokenizer.convert_tokens_to_ids(list(PROMPT))
    eot = processor.tokenizer.eos_token_id

    def features(audios):
        return processor.feature_extractor(audios, sampling_rate=16000, return_tensors="pt").input_features

    def transcribe(audios):
        out = []
        for i in range(0, len(audios), 32):
            with torch.inference_mode():
                ids = model.generate(features(audios[i:i + 32]), language="en", task="transcribe", max_new_tokens=40)
            out += [t.strip() for t in processor.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return out

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        train_set = data.synthesise(6000, data.TRAIN_VOICES, data.TRAIN_VARIANTS, data.TRAIN_SPEEDS, seed, Path(tmp))
        held_out = data.synthesise(200, data.HELD_OUT_VOICES, data.HELD_OUT_VARIANTS, data.HELD_OUT_SPEEDS, seed + 1,
                                   Path(tmp))
    print(f"synthesised {len(train_set)} training and {len(held_out)} held-out utterances in {time.time() - t0:.0f} s; "
          f"model: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    def batch_loss(indices):
        audios = [data.augment(train_set[i][1], rng)[:96000] for i in indices]
        rows = [prompt + list(train_set[i][0].encode()) + [eot] for i in indices]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), eot, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, :len(row)] = torch.tensor(row)
            labels[r, :len(row) - 1] = torch.tensor(row[1:])  # each position predicts the next token
        logits = model(input_features=features(audios), decoder_input_ids=ids).logits
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100)

    data.fit(model, batch_loss, lambda clips: transcribe([a for _, a in clips]), train_set, held_out, minutes, rng, t0,
             lr=1.5e-3, batch=32, warmup=150, weight_decay=1e-2)
    model.eval()
    wer = data.word_error_rate([t for t, _ in held_out], transcribe([a for _, a in held_out]))
    print(f"held-out WER ({len(held_out)} utterances, voices and variants never trained on): {wer:.3f}", flush=True)
    model.save_pretrained(dest)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="the Whisper example's model")
    parser.add_argument("dest", nargs="?", default=Path(__file__).with_name("model"), type=Path)
    parser.add_argument("--minutes", type=float, default=22.0, help="training time (0: random weights, untrained)")
    args = parser.parse_args()
    if args.minutes:
        train(args.minutes, args.dest)
    else:
        write_tiny_whisper(args.dest)
