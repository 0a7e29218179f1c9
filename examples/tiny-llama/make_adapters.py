"""Write LoRA adapters for the tiny-llama example with PEFT itself (random weights, seeded): a
NIM_PEFT_SOURCE directory, one folder per adapter, as NIM reads it. Nothing is downloaded.

Run from the repository root: python examples/tiny-llama/make_adapters.py DEST [NAME:RANK ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

MODEL = Path(__file__).resolve().parent / "model"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def write_adapter(checkpoint: Path, folder: Path, rank: int, targets: list[str], seed: int) -> None:
    """A random LoRA adapter of `rank` on `targets`, saved by PEFT into `folder`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    # random A and B (PEFT's default zeroes B: the adapter would be the base model), halved so the
    # base still shows through
    peft = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False))
    with torch.no_grad():
        for name, parameter in peft.named_parameters():
            if "lora_" in name:
                parameter.mul_(0.5)
    peft.save_pretrained(folder)


def main(dest: Path, specs: list[str]) -> None:
    for seed, spec in enumerate(specs or ["math:8", "poems:4"]):
        name, rank = spec.split(":")
        write_adapter(MODEL, dest / name, int(rank), TARGETS, seed)
        print(f"wrote {dest / name} (rank {rank} on {', '.join(TARGETS)})")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2:])
