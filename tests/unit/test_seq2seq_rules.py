"""The encoder-decoder loop's generation rules (nimbuild.serving.seq2seq.DecodingRules) against
transformers' own logits processors, built by `generate` from the same GenerationConfig: on random
logits and sequences, the tokens each leaves choosable must be the same."""

from __future__ import annotations

import numpy as np
import pytest

from nimbuild.errors import ExportError
from nimbuild.export.seq2seq import decoding_rules, greedy_reference

VOCAB = 12


def _processors(config, prompt_length: int, max_new_tokens: int):
    from transformers import GenerationConfig, MarianConfig, MarianMTModel

    model = MarianMTModel(MarianConfig(vocab_size=VOCAB, d_model=8, encoder_layers=1, decoder_layers=1,
                                       encoder_attention_heads=1, decoder_attention_heads=1, encoder_ffn_dim=8,
                                       decoder_ffn_dim=8, max_position_embeddings=64, pad_token_id=11,
                                       decoder_start_token_id=11, eos_token_id=0))
    reference = greedy_reference(GenerationConfig(**config), max_new_tokens)
    reference, _ = model._prepare_generation_config(reference)
    model._prepare_special_tokens(reference, device="cpu")
    reference.max_length = prompt_length + max_new_tokens  # what generate sets from max_new_tokens
    # the rules are read from the config as generate completed it (the model's defaults filled in)
    return model._get_logits_processor(reference, input_ids_seq_length=prompt_length, device="cpu"), reference


CONFIGS = {
    "forced end at the budget": {"eos_token_id": 0, "forced_eos_token_id": 0},
    "forced start": {"eos_token_id": 0, "forced_bos_token_id": 5, "begin_suppress_tokens": [3]},
    "bad words, one and several tokens": {"eos_token_id": 0, "bad_words_ids": [[11], [0], [4, 5, 6]]},
    "suppressed, at the start too": {"eos_token_id": [0, 1], "suppress_tokens": [2, 9], "begin_suppress_tokens": [0, 7]},
    "no repeated 2-grams": {"eos_token_id": 0, "no_repeat_ngram_size": 2},
    "no repeated tokens": {"eos_token_id": 0, "no_repeat_ngram_size": 1},
    "a minimum length": {"eos_token_id": [0, 3], "min_length": 5},
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("prompt_length", [1, 4])
def test_each_rule_leaves_the_tokens_transformers_leaves(name, prompt_length):
    import torch

    config, budget = CONFIGS[name], 6
    processors, completed = _processors(config, prompt_length, budget)
    rules = decoding_rules(completed, name)
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(60):
        length = prompt_length + int(rng.integers(0, budget))
        sequence = [int(t) for t in rng.integers(2, 7, size=length)]  # few distinct tokens: n-grams and bad words recur
        if trial % 3 == 0 and length >= 3:
            sequence[-2:] = [4, 5]
        logits = rng.normal(size=VOCAB).astype(np.float32)
        theirs = processors(torch.tensor([sequence]), torch.tensor(logits[None].copy()))[0].numpy()
        ours = logits.copy()
        rules.apply(ours, sequence, prompt_length, last=length == prompt_length + budget - 1)
        assert np.array_equal(np.isinf(ours), np.isinf(theirs)), (name, sequence)
        assert np.argmax(ours) == np.argmax(theirs)
        checked += int(np.isinf(theirs).any())
    assert checked, f"{name}: no trial masked anything, so the comparison proved nothing"


def test_settings_the_loop_does_not_reproduce_are_refused_by_name():
    from transformers import GenerationConfig

    with pytest.raises(ExportError, match=r"sets repetition_penalty=1\.3, which nimbuild's greedy loop does not reproduce"):
        decoding_rules(GenerationConfig(eos_token_id=0, repetition_penalty=1.3), "ckpt")
    with pytest.raises(ExportError, match="names no eos_token_id"):
        decoding_rules(GenerationConfig(), "ckpt")
    # beams and sampling are dropped, not refused: profiles serve greedy decoding, as documented
    reference = greedy_reference(GenerationConfig(eos_token_id=0, num_beams=4, do_sample=True, temperature=0.7), 9)
    assert (reference.num_beams, reference.do_sample, reference.max_new_tokens) == (1, False, 9)
    assert decoding_rules(reference, "ckpt").eos == (0,)
