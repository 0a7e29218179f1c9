"""Write examples/tiny-llama/model: a 2-layer Llama with random weights and a real byte-level BPE
tokenizer with a ChatML chat template, saved by transformers. It is the text-generation example
(examples/tiny-llama/recipe.yaml) and a test fixture; nothing is downloaded.

The weights are random (seeded), so the text is gibberish; what matters is that every part of the
path (tokenizer, chat template, KV-cache graph, batching, sampling, streaming) is the real one.
Run from the repository root: python examples/tiny-llama/make_tiny_llama.py [DEST]
"""

import sys
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<unk>", "<s>", "<|im_start|>", "<|im_end|>"]


def tokenizer(corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # the alphabet is what the corpus uses (ASCII), not all 256 bytes: every token is then whole
    # characters, so even random weights produce readable (if meaningless) text
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIAL, show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", chat_template=CHAT_TEMPLATE)


def main(dest: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    root = Path(__file__).resolve().parents[2]
    corpus = (root / "examples" / "minilm-embed" / "sentences.txt").read_text().splitlines()
    tok = tokenizer(corpus * 4)
    torch.manual_seed(0)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    # a wide initialiser spreads the logits, so greedy decoding is not a near-tie at every step
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=0.1, bos_token_id=tok.bos_token_id, eos_token_id=eos, pad_token_id=eos,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=eos, pad_token_id=eos)
    model.save_pretrained(dest)
    tok.save_pretrained(dest)
    print(f"wrote {dest} ({sum(p.numel() for p in model.parameters())} parameters, vocabulary {len(tok)})")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("examples/tiny-llama/model"))
