"""Write examples/tiny-rerank/model: a 2-layer BERT cross-encoder (`BertForSequenceClassification`,
one label: a relevance logit per query-passage pair, the ms-marco cross-encoders' shape) with random
weights and a real WordPiece tokenizer trained here, saved by transformers. No real cross-encoder
small enough to ship can be had offline, so the weights are random (seeded) and its rankings are
meaningless; every part of the path (pair tokenisation with token types, the classifier head,
batching, sorting) is the real one. It is the ranking example (recipe.yaml beside this file) and a
test fixture; nothing is downloaded.

Run from the repository root: python examples/tiny-rerank/make_tiny_rerank.py [DEST]
"""

import sys
from pathlib import Path

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tokenizer(corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=1024, special_tokens=SPECIAL, show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    # BERT's pair template: [CLS] query [SEP] passage [SEP], token type 1 over the passage
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return BertTokenizerFast(tokenizer_object=tok, model_max_length=256)


def main(dest: Path) -> None:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    root = Path(__file__).resolve().parents[2]
    corpus = (root / "examples" / "minilm-embed" / "sentences.txt").read_text().splitlines()
    tok = tokenizer(corpus * 4)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=256, num_labels=1,
                        # a wide initialiser spreads the logits, so the passages' order is not a near-tie
                        initializer_range=0.2)
    model = BertForSequenceClassification(config)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    print(f"wrote {dest} ({sum(p.numel() for p in model.parameters())} parameters, vocabulary {len(tok)})")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("examples/tiny-rerank/model"))
