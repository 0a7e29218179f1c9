"""Train examples/nmt-en-de/model: a tiny MarianMT (English -> German) on the synthetic parallel
text of examples/nmt-en-de/nmt_phrases.py, on CPU in minutes. It is the translation example
(examples/nmt-en-de/recipe.yaml) and a test fixture; nothing is downloaded.

The checkpoint is what Hugging Face's Marian models ship, written by the real libraries: a
SentencePiece model (trained here on both sides' text, so source.spm and target.spm are one
model), MarianTokenizer's vocab.json, and MarianMTModel's config and weights. The placeholders
<dnt0>.. are user-defined pieces the model learns to copy, so the runtime can keep phrases
untranslated. At the end it reports greedy exact-match accuracy on held-out numbers (never
trained on) and on fresh sentences of every kind, with transformers' own generate().

    python examples/nmt-en-de/make_nmt_en_de.py [--minutes 6] [DEST]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nmt_phrases import PLACEHOLDERS, held_out_numbers, pair  # noqa: E402

SEED = 20261202
VOCAB = 320  # SentencePiece pieces, plus </s>, <unk> and <pad>


def train_tokenizer(workdir: Path, dest: Path):
    """One SentencePiece unigram model over both languages' text, as MarianTokenizer reads it."""
    import sentencepiece as spm
    from transformers import MarianTokenizer

    rng = random.Random(SEED)
    corpus = workdir / "corpus.txt"
    corpus.write_text("\n".join(side for _ in range(20000) for side in pair(rng)) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(workdir / "spm"), vocab_size=VOCAB,
                                   model_type="unigram", character_coverage=1.0, user_defined_symbols=PLACEHOLDERS,
                                   bos_id=-1, eos_id=-1, unk_id=0, minloglevel=2)
    processor = spm.SentencePieceProcessor(model_file=str(workdir / "spm.model"))
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size()) if i != processor.unk_id()]
    vocab = {"</s>": 0, "<unk>": 1, **{p: i + 2 for i, p in enumerate(pieces)}}
    vocab["<pad>"] = len(vocab)  # Marian's pad is its last id, and the decoder starts from it
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("source.spm", "target.spm"):
        (dest / name).write_bytes((workdir / "spm.model").read_bytes())
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=1), encoding="utf-8")
    tokenizer = MarianTokenizer(str(dest / "source.spm"), str(dest / "target.spm"), str(dest / "vocab.json"),
                                source_lang="en", target_lang="de", model_max_length=64)
    tokenizer.save_pretrained(dest)
    return tokenizer


def new_model(tokenizer):
    from transformers import MarianConfig, MarianMTModel

    pad = tokenizer.pad_token_id
    config = MarianConfig(
        vocab_size=len(tokenizer), d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256, max_position_embeddings=64,
        pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=pad,
        forced_eos_token_id=tokenizer.eos_token_id, dropout=0.1, scale_embedding=True,
        share_encoder_decoder_embeddings=True,
    )
    return MarianMTModel(config)


def train(model, tokenizer, minutes: float, batch_size: int = 64) -> None:
    import torch

    torch.manual_seed(SEED)
    rng = random.Random(SEED + 1)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    warmup, began, step = 200, time.monotonic(), 0
    model.train()
    while (elapsed := (time.monotonic() - began) / (minutes * 60)) < 1:
        sources, targets = zip(*(pair(rng) for _ in range(batch_size)))
        batch = tokenizer(list(sources), text_target=list(targets), padding=True, return_tensors="pt")
        batch["labels"][batch["labels"] == tokenizer.pad_token_id] = -100
        for group in optimiser.param_groups:
            # warm up, then decay linearly to a tenth over the time budget: the last steps polish
            group["lr"] = 2e-3 * min(1.0, (step + 1) / warmup) * (1 - 0.9 * elapsed)
        loss = model(**batch).loss
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        step += 1
        if step % 200 == 0:
            print(f"step {step}: loss {loss.item():.3f}", flush=True)
    model.eval()


def accuracy(model, tokenizer, pairs: list[tuple[str, str]]) -> float:
    import torch

    right = 0
    for start in range(0, len(pairs), 64):
        chunk = pairs[start:start + 64]
        batch = tokenizer([s for s, _ in chunk], padding=True, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=40)
        got = tokenizer.batch_decode(out, skip_special_tokens=True)
        right += sum(g == want for g, (_, want) in zip(got, chunk))
    return right / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", nargs="?", default="examples/nmt-en-de/model")
    parser.add_argument("--minutes", type=float, default=6.0)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    dest = Path(args.dest)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_tokenizer(Path(tmp), dest)
    model = new_model(tokenizer)
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters, vocabulary {len(tokenizer)}", flush=True)
    train(model, tokenizer, args.minutes)
    rng = random.Random(SEED + 2)
    fresh = [pair(rng, training=False) for _ in range(300)]
    numbers = held_out_numbers(300)
    print(f"held-out numbers exact match: {accuracy(model, tokenizer, numbers):.1%} of {len(numbers)}")
    print(f"fresh sentences (held-out numbers) exact match: {accuracy(model, tokenizer, fresh):.1%} of {len(fresh)}")
    model.generation_config.max_length = 64
    model.save_pretrained(dest)
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
