"""Tiny NeMo speech checkpoints' parts: the character set, and a real SentencePiece BPE model."""

from pathlib import Path

from helpers.examples import asr_trainer

LABELS = [" ", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r", "s",
          "t", "u", "v", "w", "x", "y", "z", "'"]



def sentencepiece_dir(root: Path) -> Path:
    """A real sentencepiece BPE model, trained here on the digits vocabulary, as NeMo's BPE models use."""
    import sentencepiece

    trainer = asr_trainer()
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(trainer.DIGITS + trainer.COMMANDS) * 20 + "\n")
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(root / "tokenizer"), vocab_size=48,
                                             model_type="bpe", character_coverage=1.0, minloglevel=2)
    vocab = [line.split("\t")[0] for line in (root / "tokenizer.vocab").read_text().splitlines()]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return root

