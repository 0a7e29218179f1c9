"""The tiny-canary example's checkpoint: a random-weight Canary (NeMo's EncDecMultiTaskModel) saved by
NeMo itself. Not trained: it shows the build and the served API, not recognition (see README.md).

    python examples/tiny-canary/make_tiny_canary.py [--format canary|canary2]   # writes tiny-canary.nemo here

The tests build fresh ones with `write_tiny_canary` (tests/tasks/test_canary.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

HERE = Path(__file__).resolve().parent
RATE = 16000
CANARY2_TOKENS = ["<|startofcontext|>", "<|emo:undefined|>", "<|itn|>", "<|noitn|>", "<|timestamp|>", "<|notimestamp|>",
                  "<|diarize|>", "<|nodiarize|>"]


TEXTS = {"en": ["one two three four five", "stop cancel call", "hello world the quick brown fox"],
         "de": ["eins zwei drei vier fuenf", "halt abbrechen anrufen", "hallo welt der schnelle braune fuchs"]}


def write_tiny_canary(root: Path, prompt_format: str = "canary", *, texts: dict[str, list[str]] | None = None,
                      sizes: tuple[int, int] = (40, 44), encoder: tuple[int, int] = (48, 2), decoder: tuple[int, int] = (64, 2),
                      seed: int = 0) -> Path:
    """A random-weight Canary (EncDecMultiTaskModel: a 2-layer FastConformer, a 2-layer pre-LN
    transformer decoder) saved by NeMo itself, with Canary's aggregate tokenizer: NeMo's special-token
    model and an English and a German SentencePiece BPE (96 ids in all, 104 with canary2's 8 more
    special tokens: NeMo pads the decoder's vocabulary to a multiple of 8, and a random model that
    chose an id past the tokenizer's would crash NeMo's own decoding)."""
    import sentencepiece
    import torch
    from nemo.collections.asr.models import EncDecMultiTaskModel
    from nemo.collections.common.tokenizers.canary_tokenizer import CanaryTokenizer
    from omegaconf import OmegaConf

    from nimbuild.export.asr import quiet

    root.mkdir(parents=True, exist_ok=True)
    texts = texts or TEXTS
    langs = {}
    for lang, size in zip(("en", "de"), sizes):
        folder = root / lang
        folder.mkdir(exist_ok=True)
        (folder / "corpus.txt").write_text("\n".join(texts[lang] * 30) + "\n")
        sentencepiece.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=str(folder / "tokenizer"),
                                                 vocab_size=size, model_type="bpe", character_coverage=1.0, minloglevel=2)
        vocab = [line.split("\t")[0] for line in (folder / "tokenizer.vocab").read_text().splitlines()]
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
        langs[lang] = {"dir": str(folder), "type": "bpe"}
    special = ["translate", "transcribe", *langs] + (CANARY2_TOKENS if prompt_format == "canary2" else [])
    with quiet():
        CanaryTokenizer.build_special_tokenizer(special, root / "special", force_rebuild=True)
    (width, depth), (hidden, layers) = encoder, decoder
    dropout = {"ffn_dropout": 0.0, "attn_score_dropout": 0.0, "attn_layer_dropout": 0.0}
    config = {
        "sample_rate": RATE, "prompt_format": prompt_format, "restore_timestamps_model": False,
        "model_defaults": {"asr_enc_hidden": width, "lm_enc_hidden": hidden, "lm_dec_hidden": hidden},
        "tokenizer": {"dir": None, "type": "agg",
                      "langs": {"spl_tokens": {"dir": str(root / "special"), "type": "bpe"}, **langs},
                      "custom_tokenizer": {"_target_": "nemo.collections.common.tokenizers.canary_tokenizer.CanaryTokenizer",
                                           "tokenizer": None}},
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor", "sample_rate": RATE,
                         "normalize": "per_feature", "window_size": 0.025, "window_stride": 0.01, "window": "hann",
                         "features": 80, "n_fft": 512, "log": True, "frame_splicing": 1, "dither": 0.0, "pad_to": 0,
                         "pad_value": 0.0},
        "encoder": {"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": 80, "feat_out": -1,
                    "n_layers": depth, "d_model": width, "subsampling": "dw_striding", "subsampling_factor": 8,
                    "subsampling_conv_channels": 32, "causal_downsampling": False, "ff_expansion_factor": 2,
                    "self_attention_model": "rel_pos", "n_heads": 4, "att_context_size": [-1, -1], "xscaling": False,
                    "untie_biases": True, "pos_emb_max_len": 5000, "conv_kernel_size": 9, "conv_norm_type": "batch_norm",
                    "conv_context_size": None, "dropout": 0.0, "dropout_pre_encoder": 0.0, "dropout_emb": 0.0,
                    "dropout_att": 0.0},
        "transf_decoder": {"_target_": "nemo.collections.asr.modules.transformer.get_nemo_transformer", "model_name": None,
                           "pretrained": False, "encoder": None, "pre_ln_final_layer_norm": True,
                           "config_dict": {"max_sequence_length": 512, "num_token_types": 0, "embedding_dropout": 0.0,
                                           "learn_positional_encodings": False, "hidden_size": hidden,
                                           "inner_size": 4 * hidden, "num_layers": layers, "num_attention_heads": 4,
                                           "hidden_act": "relu", "pre_ln": True, "vocab_size": None, **dropout}},
        "head": {"_target_": "nemo.collections.asr.parts.submodules.token_classifier.TokenClassifier", "num_layers": 1,
                 "activation": "relu", "log_softmax": True, "hidden_size": hidden, "num_classes": None, "dropout": 0.0,
                 "use_transformer_init": True},
        "decoding": {"strategy": "beam", "return_best_hypothesis": True,
                     "beam": {"beam_size": 1, "len_pen": 0.0, "max_generation_delta": 50}},
        "loss": {"_target_": "nemo.collections.common.losses.smoothed_cross_entropy.SmoothedCrossEntropyLoss",
                 "label_smoothing": 0.0, "pad_id": None},
    }
    torch.manual_seed(seed)
    with quiet():
        model = EncDecMultiTaskModel(cfg=OmegaConf.create(config))
        path = root / f"tiny-{prompt_format}.nemo"
        model.save_to(str(path))
    return path


GERMAN = ["null", "eins", "zwei", "drei", "vier", "fuenf", "sechs", "sieben", "acht", "neun", "anrufen", "halt", "ja",
          "nein", "oben", "unten", "links", "rechts", "an", "aus", "abbrechen", "wiederholen"]


def train(minutes: float, dest: Path, seed: int = 7) -> None:
    """A tiny Canary trained from scratch on the asr-digits example's espeak-ng speech (its voices,
    sentences, augmentation and held-out scoring): English transcription with Canary's own prompt,
    the model's decoding set to greedy (what nimbuild serves, and so what NeMo's transcribe() does
    with it); the held-out word error rate printed at each epoch, by NeMo's transcribe()."""
    import random
    import shutil
    import sys
    import tempfile
    import time

    import torch
    from omegaconf import OmegaConf

    sys.path.insert(0, str(HERE.parent / "asr-digits"))
    import make_asr_digits as data  # the CTC example's speech, augmentation and scoring
    from nemo.collections.asr.models import EncDecMultiTaskModel

    from nimbuild.export.asr import quiet

    torch.manual_seed(seed)
    rng = random.Random(seed)
    # the scratch folder outlives training: NeMo saves the tokenizers from the archive it restored
    scratch = tempfile.mkdtemp(prefix="tiny-canary-")
    corpora = {"en": [" ".join(data.DIGITS + data.COMMANDS)], "de": [" ".join(GERMAN)]}
    path = write_tiny_canary(Path(scratch) / "model", texts=corpora, sizes=(48, 36), encoder=(96, 3),
                             decoder=(96, 2), seed=seed)
    with quiet():
        model = EncDecMultiTaskModel.restore_from(str(path), map_location="cpu")
        model.change_decoding_strategy(OmegaConf.create({"strategy": "greedy", "greedy": {"max_generation_delta": 50}}))
    t0 = time.time()
    train_set = data.synthesise(6000, data.TRAIN_VOICES, data.TRAIN_VARIANTS, data.TRAIN_SPEEDS, seed, Path(scratch))
    held_out = data.synthesise(200, data.HELD_OUT_VOICES, data.HELD_OUT_VARIANTS, data.HELD_OUT_SPEEDS, seed + 1,
                               Path(scratch))
    print(f"synthesised {len(train_set)} training and {len(held_out)} held-out utterances in {time.time() - t0:.0f} s; "
          f"model: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    slots = {"source_lang": "en", "target_lang": "en", "task": "asr", "pnc": "yes"}
    prompt = model.prompt.encode_dialog(turns=[{"role": "user", "slots": {
        **slots, model.prompt.PROMPT_LANGUAGE_SLOT: "spl_tokens"}}])["context_ids"].tolist()
    eos, pad = int(model.tokenizer.eos_id), int(model.tokenizer.pad_id)

    def transcribe(audios):
        with quiet():
            return [h.text.strip() for h in model.transcribe(list(audios), batch_size=32, verbose=False, num_workers=0,
                                                             **slots)]

    def batch_loss(indices):
        audios = [data.augment(train_set[i][1], rng) for i in indices]
        signal = torch.zeros(len(audios), max(len(a) for a in audios))
        for r, audio in enumerate(audios):
            signal[r, :len(audio)] = torch.as_tensor(audio)
        rows = [prompt + model.tokenizer.text_to_ids(train_set[i][0], "en") + [eos] for i in indices]
        width = max(map(len, rows)) - 1
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, :len(row) - 1] = torch.tensor(row[:-1])
            labels[r, len(prompt) - 1:len(row) - 1] = torch.tensor(row[len(prompt):])  # the transcript, not the prompt
        log_probs, *_ = model.forward(input_signal=signal, input_signal_length=torch.tensor([len(a) for a in audios]),
                                      transcript=ids, transcript_length=torch.tensor([len(r) - 1 for r in rows]))
        return torch.nn.functional.nll_loss(log_probs.transpose(1, 2), labels, ignore_index=-100)

    data.fit(model, batch_loss, lambda clips: transcribe([a for _, a in clips]), train_set, held_out, minutes, rng, t0,
             lr=1.5e-3, batch=32, warmup=150, weight_decay=1e-2)
    model.eval()
    wer = data.word_error_rate([t for t, _ in held_out], transcribe([a for _, a in held_out]))
    print(f"held-out WER ({len(held_out)} utterances, voices and variants never trained on): {wer:.3f}", flush=True)
    with quiet():
        model.save_to(str(dest))
    shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="the Canary example's model")
    parser.add_argument("dest", nargs="?", default=HERE / "tiny-canary.nemo", type=Path)
    parser.add_argument("--minutes", type=float, default=25.0, help="training time (0: random weights, untrained)")
    parser.add_argument("--format", choices=("canary", "canary2"), default="canary", help="the prompt format (untrained only)")
    args = parser.parse_args()
    if args.minutes:
        train(args.minutes, args.dest)
        return
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        shutil.copy(write_tiny_canary(Path(scratch), args.format), args.dest)
    print(f"wrote {args.dest}")


if __name__ == "__main__":
    main()
