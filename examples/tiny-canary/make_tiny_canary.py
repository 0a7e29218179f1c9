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


def write_tiny_canary(root: Path, prompt_format: str = "canary") -> Path:
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
    texts = {"en": ["one two three four five", "stop cancel call", "hello world the quick brown fox"],
             "de": ["eins zwei drei vier fuenf", "halt abbrechen anrufen", "hallo welt der schnelle braune fuchs"]}
    langs = {}
    for lang, size in (("en", 40), ("de", 44)):
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
    hidden, dropout = 64, {"ffn_dropout": 0.0, "attn_score_dropout": 0.0, "attn_layer_dropout": 0.0}
    config = {
        "sample_rate": RATE, "prompt_format": prompt_format, "restore_timestamps_model": False,
        "model_defaults": {"asr_enc_hidden": 48, "lm_enc_hidden": hidden, "lm_dec_hidden": hidden},
        "tokenizer": {"dir": None, "type": "agg",
                      "langs": {"spl_tokens": {"dir": str(root / "special"), "type": "bpe"}, **langs},
                      "custom_tokenizer": {"_target_": "nemo.collections.common.tokenizers.canary_tokenizer.CanaryTokenizer",
                                           "tokenizer": None}},
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor", "sample_rate": RATE,
                         "normalize": "per_feature", "window_size": 0.025, "window_stride": 0.01, "window": "hann",
                         "features": 80, "n_fft": 512, "log": True, "frame_splicing": 1, "dither": 0.0, "pad_to": 0,
                         "pad_value": 0.0},
        "encoder": {"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": 80, "feat_out": -1,
                    "n_layers": 2, "d_model": 48, "subsampling": "dw_striding", "subsampling_factor": 8,
                    "subsampling_conv_channels": 32, "causal_downsampling": False, "ff_expansion_factor": 2,
                    "self_attention_model": "rel_pos", "n_heads": 4, "att_context_size": [-1, -1], "xscaling": False,
                    "untie_biases": True, "pos_emb_max_len": 5000, "conv_kernel_size": 9, "conv_norm_type": "batch_norm",
                    "conv_context_size": None, "dropout": 0.0, "dropout_pre_encoder": 0.0, "dropout_emb": 0.0,
                    "dropout_att": 0.0},
        "transf_decoder": {"_target_": "nemo.collections.asr.modules.transformer.get_nemo_transformer", "model_name": None,
                           "pretrained": False, "encoder": None, "pre_ln_final_layer_norm": True,
                           "config_dict": {"max_sequence_length": 512, "num_token_types": 0, "embedding_dropout": 0.0,
                                           "learn_positional_encodings": False, "hidden_size": hidden,
                                           "inner_size": 4 * hidden, "num_layers": 2, "num_attention_heads": 4,
                                           "hidden_act": "relu", "pre_ln": True, "vocab_size": None, **dropout}},
        "head": {"_target_": "nemo.collections.asr.parts.submodules.token_classifier.TokenClassifier", "num_layers": 1,
                 "activation": "relu", "log_softmax": True, "hidden_size": hidden, "num_classes": None, "dropout": 0.0,
                 "use_transformer_init": True},
        "decoding": {"strategy": "beam", "return_best_hypothesis": True,
                     "beam": {"beam_size": 1, "len_pen": 0.0, "max_generation_delta": 50}},
        "loss": {"_target_": "nemo.collections.common.losses.smoothed_cross_entropy.SmoothedCrossEntropyLoss",
                 "label_smoothing": 0.0, "pad_id": None},
    }
    torch.manual_seed(0)
    with quiet():
        model = EncDecMultiTaskModel(cfg=OmegaConf.create(config))
        path = root / f"tiny-{prompt_format}.nemo"
        model.save_to(str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=("canary", "canary2"), default="canary")
    args = parser.parse_args()
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        path = write_tiny_canary(Path(scratch), args.format)
        shutil.copy(path, HERE / "tiny-canary.nemo")
    print(f"wrote {HERE / 'tiny-canary.nemo'}")


if __name__ == "__main__":
    main()
