"""The decoder families text generation has proved, as data: one row per `model_type`.

A family is here only when `tests/tasks/test_llm_families.py` builds a fresh random-weight
checkpoint of it with transformers, runs `recipe init`, compiles and serves it, and the served
greedy tokens equal `transformers.generate` (at batch 1 and batched, past its window). The one
exporter (nimbuild.export.llm) reads a row and the checkpoint's own config fields for what differs,
and nothing else branches on the family:

- `experts`: the config field giving the number of experts; exported through the dense experts
  form (every expert on every token, weighted by the router's top-k), never the data-dependent
  eager loop.
- `trtllm`: the TensorRT-LLM model class whose checkpoint conversion takes the family (its
  `MODEL_MAP` in the TensorRT engine flow), or `trtllm_refused`: why no engine can be planned.
- What the config itself says is read the same way for every family: a sliding window (on every
  layer, or on those `layer_types` names `sliding_attention`) is applied in the graph's mask over
  the full past, so the runtime's flat cache layout holds for every layer (docs/design.md §13 says
  why, with the cost), and parity prompts cross it; attention-logit soft-capping is applied inside
  the exported attention as transformers' eager attention applies it; `longrope` picks its factors
  per sequence; a rope type the graph cannot follow is refused (`check_exportable`).

`recipe init` refuses a `*ForCausalLM` whose model type has no row, naming the ones that are proved
(`--task text-generation` still builds it, and the parity gate judges what comes out).

Build side only (recipe init, export, compile planning): it imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nimbuild.errors import ExportError


@dataclass(frozen=True)
class Family:
    model_type: str  # config.json's model_type
    name: str  # as docs and messages name it
    architecture: str  # the class transformers writes into config.json's architectures
    needs: str  # what its graph needs beyond a plain decoder, in the docs' words
    experts: str | None = None  # the config field with the number of experts (mixture of experts)
    trtllm: str | None = None  # TensorRT-LLM's model class converting it (its TensorRT engine flow)
    trtllm_refused: str = ""  # why TensorRT-LLM cannot build it, where trtllm is None


FAMILIES: tuple[Family, ...] = (
    Family("llama", "Llama (2, 3.x)", "LlamaForCausalLM",
           "grouped-query attention; rope_scaling `llama3` computed at load", trtllm="LLaMAForCausalLM"),
    Family("mistral", "Mistral", "MistralForCausalLM", "sliding window on every layer (where set)",
           trtllm="LLaMAForCausalLM"),
    Family("mixtral", "Mixtral", "MixtralForCausalLM", "top-k of N experts per token; sliding window where set",
           experts="num_local_experts", trtllm="LLaMAForCausalLM"),
    Family("gemma", "Gemma", "GemmaForCausalLM", "embeddings scaled by sqrt(hidden); tied head",
           trtllm="GemmaForCausalLM"),
    Family("gemma2", "Gemma 2", "Gemma2ForCausalLM",
           "attention and final-logit soft-capping; local/global layers alternating; query_pre_attn_scalar",
           trtllm="GemmaForCausalLM"),
    Family("gemma3_text", "Gemma 3 (text)", "Gemma3ForCausalLM",
           "5 local : 1 global layers; q/k norm; a rope base per layer kind", trtllm="GemmaForCausalLM"),
    Family("qwen2", "Qwen2 / Qwen2.5", "Qwen2ForCausalLM", "q/k/v bias; sliding window where use_sliding_window",
           trtllm="QWenForCausalLM"),
    Family("qwen3", "Qwen3", "Qwen3ForCausalLM", "q/k norm", trtllm="QWenForCausalLM"),
    Family("qwen3_moe", "Qwen3-MoE", "Qwen3MoeForCausalLM", "top-k of N experts per token; q/k norm",
           experts="num_experts",
           trtllm_refused="TensorRT-LLM converts Qwen3MoeForCausalLM only for its PyTorch backend, which builds no "
                          "engine to ship; serve the onnxruntime profile, or TensorRT-LLM's PyTorch flow on the host"),
    Family("phi3", "Phi-3", "Phi3ForCausalLM",
           "fused qkv and gate/up projections; `longrope` factors per sequence, the cache re-encoded at the switch",
           trtllm="Phi3ForCausalLM"),
    Family("gpt2", "GPT-2", "GPT2LMHeadModel", "learned positions; fused qkv (Conv1D)", trtllm="GPTForCausalLM"),
)
BY_MODEL_TYPE = {f.model_type: f for f in FAMILIES}
# rope types whose frequencies change with the sequence through Python control flow: the exported
# graph would keep the branch the example took
_UNEXPORTABLE_ROPE = {"dynamic": "dynamic NTK rope rescales its frequencies by Python branching on the length"}


def family(config: dict[str, Any]) -> Family | None:
    return BY_MODEL_TYPE.get(str(config.get("model_type")))


def proved() -> str:
    return ", ".join(f"{f.name} ({f.model_type})" for f in FAMILIES)


def unproved(config: dict[str, Any]) -> str | None:
    """Why `recipe init` will not pick text generation for this checkpoint on its own, or None."""
    if family(config) is not None:
        return None
    return (f"model type {config.get('model_type')!r} is no decoder family nimbuild has proved (a test that serves "
            f"it token for token against transformers): {proved()}. `--task text-generation` builds it anyway, and "
            f"the parity gate refuses it if it does not generate what transformers does")


def why_no_trtllm(config: dict[str, Any]) -> str | None:
    """Why TensorRT-LLM engines cannot be planned for this checkpoint, or None."""
    row = family(config)
    if row is None:
        return (f"model type {config.get('model_type')!r} is mapped to no TensorRT-LLM converter here "
                f"(nimbuild maps {', '.join(f.model_type for f in FAMILIES if f.trtllm)})")
    return row.trtllm_refused or None


def local_window(config: dict[str, Any]) -> int | None:
    """The sliding window some layer attends over, or None where every layer sees the whole past."""
    window = config.get("sliding_window")
    if not isinstance(window, int) or window <= 0:
        return None
    kinds = config.get("layer_types")
    if isinstance(kinds, list) and "sliding_attention" not in kinds:
        return None  # a window stated but used by no layer (Qwen2 without use_sliding_window)
    if config.get("use_sliding_window") is False:
        return None
    return window


def rope_parameters(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rope parameter set the config names (one, or one per layer kind as Gemma 3 has)."""
    found = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(found, dict):
        return []
    nested = [v for v in found.values() if isinstance(v, dict)]
    return nested or [found]


def rope_switch(config: dict[str, Any]) -> int | None:
    """The length past which `longrope` switches a sequence to its long factors, or None."""
    for params in rope_parameters(config):
        if str(params.get("rope_type", params.get("type"))) == "longrope":
            original = params.get("original_max_position_embeddings") or config.get("original_max_position_embeddings")
            return int(original) if original else None
    return None


def boundaries(config: dict[str, Any], context: int) -> list[int]:
    """Lengths inside the served context where what a layer attends to changes: the sliding window,
    the longrope switch. Parity prompts cross each."""
    found = [local_window(config), rope_switch(config)]
    return sorted({b for b in found if b and b < context})


def check_exportable(config: dict[str, Any]) -> None:
    """Refuse, in one line naming the family and the field, what the graph cannot do as transformers does."""
    name = (family(config) or Family(str(config.get("model_type")), str(config.get("model_type")), "", "")).name
    for params in rope_parameters(config):
        kind = str(params.get("rope_type", params.get("type", "default")))
        if kind in _UNEXPORTABLE_ROPE:
            field = "rope_parameters" if "rope_parameters" in config else "rope_scaling"
            raise ExportError(f"{name}: {field}.rope_type {kind!r} cannot be exported: {_UNEXPORTABLE_ROPE[kind]}")
