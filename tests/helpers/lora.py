"""LoRA adapters written by PEFT itself (the tiny-llama example's script: random weights, seeded),
and the greedy text of PEFT's merged model: what the LoRA tests and bench compare the served text
with."""

from __future__ import annotations

import sys
from pathlib import Path

from helpers.paths import REPO

sys.path.insert(0, str(REPO / "examples" / "tiny-llama"))
from make_adapters import write_adapter  # noqa: E402, F401  (re-exported for the tests)


def merged_greedy(checkpoint: Path, adapter: Path | None, prompt: str, new_tokens: int) -> str:
    """transformers' greedy text from PEFT's merged model (the plain model when `adapter` is None)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.eval().generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
