"""Decoder-only language models (the families of nimbuild.export.families: Llama, Mistral, Mixtral,
Gemma 1-3, Qwen2/3, Qwen3-MoE, Phi-3, GPT-2) to one KV-cache ONNX graph, checked against
`transformers`' own generation.

What differs by family is handled here once, from the checkpoint's config, in forms the graph can
express (forms_for_export): attention through grouped_attention (with soft-capping), experts in
the dense form, longrope factors per row; the cache is full for every layer, so sliding windows
live in the mask (docs/design.md §13).

One graph serves both phases: the prefill runs with a past of length 0, each decode step with the
cache the previous call returned (nimbuild.serving.generation documents the layout). The wrapper builds a
`DynamicCache` from flat past tensors and flattens the present one, so the graph's inputs and
outputs are plain tensors any runtime can feed. Only the last position's logits leave the graph:
generation needs no others, and a [batch, prompt, vocab] output would dominate prefill memory.

Attention is exported through `grouped_attention` (registered with transformers' attention
interface), not the checkpoint's default: grouped-query heads read their shared key and value
heads in place, where transformers' eager and SDPA paths first copy each shared head once per
query head (`repeat_kv`) and then transpose the copied keys, two copies of the whole cache in every
layer at every decode step. Measured with onnxruntime on the 76M-parameter Llama of
bench/bench_llm.py (12 layers, 12/4 heads, past 150, 2 threads), those copies were 24 ms of a 43 ms
decode step at batch 8. Parity still compares against transformers' own attention.

Parity is judged on what serving does: for fixed prompts, the greedy token sequence through the
graph must equal `transformers.generate`'s exactly, every step's logits must be within tolerance,
and the same prompts batched together (left-padded, as the runtime batches them) must give the
same tokens again.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nimbuild.errors import ExportError, ParityError
from nimbuild.export import families
from nimbuild.export.families import boundaries, check_exportable, rope_switch
from nimbuild.export.parity import Comparison
from nimbuild.export.reference import (
    InputSpec,
    ReferenceExport,
    Starter,
    check_graph,
    check_sequence_limit,
    graph_metadata,
    positions,
    reference,
    run_exporter,
)
from nimbuild.recipe import Recipe
from nimbuild.serving.generation import cache_names
from nimbuild.shapes import DimRange
from nimbuild.sources.hf import HFCheckpoint
from nimbuild.util.progress import Reporter

PROMPT_SEED = 20240611
PARITY_NEW = 16  # greedy tokens generated per parity prompt
HELD_TOKENS = 256  # the longest held sequence a weight-only variant's perplexity is measured on
GRAPH_INPUTS = ("input_ids", "attention_mask", "position_ids")
GROUPED_ATTENTION = "nimbuild_grouped"
DENSE_EXPERTS = "nimbuild_dense"


class CacheNames:
    """A KV-cache decoder graph's flat cache names, for an adapter with `layers` decoder layers."""

    @property
    def past_names(self) -> list[str]:
        return cache_names("past_key_values", self.layers)

    @property
    def present_names(self) -> list[str]:
        return cache_names("present", self.layers)


@dataclass
class DecoderAdapter(CacheNames):
    task: str
    module: Any  # forward(input_ids, attention_mask, position_ids, *past) -> (logits, *present)
    model: Any  # the transformers model, for generate()
    layers: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    eos_ids: list[int]
    runtime_info: dict[str, Any]
    recorded: "Recorded | None" = None  # the source's answers, kept when the source is freed

    @property
    def input_names(self) -> list[str]:
        return [*GRAPH_INPUTS, *self.past_names]

    # what a precision variant's gate judges (nimbuild.precision.variants): served greedy tokens
    # against the source's, and perplexity on the held sequences against the source's

    def expected_tokens(self) -> dict[str, list[int]]:
        return {f"prompt of {len(p)} tokens": t for p, t in zip(self.recorded.prompts, self.recorded.tokens)}

    def served(self, graph_path: Path) -> tuple[dict[str, list[int]], tuple[float, float] | None]:
        """The graph's greedy tokens on the parity prompts, and (source's, graph's) perplexity on
        the held sequences (None where none were recorded), from one onnxruntime session."""
        from nimbuild.export.reference import open_session
        from nimbuild.serving.generation import DecoderGraph, greedy

        graph = DecoderGraph(open_session(graph_path))
        recompute_at = self.runtime_info.get("recompute_cache_at")
        tokens = {f"prompt of {len(p)} tokens": greedy(graph, p, n, self.eos_ids, recompute_at=recompute_at)
                  for p, n in zip(self.recorded.prompts, self.recorded.budgets)}
        if self.recorded.held_nll is None:
            return tokens, None
        nll = graph_nll(graph, self.recorded.held, recompute_at)
        return tokens, (float(np.exp(self.recorded.held_nll)), float(np.exp(nll)))

    @property
    def output_names(self) -> list[str]:
        return ["logits", *self.present_names]


def load_decoder(checkpoint: HFCheckpoint, empty: bool = False, own_dtype: bool = False) -> DecoderAdapter:
    """The checkpoint's model behind the graph's calling convention; `empty`: built from its config
    with placeholder parameters (nimbuild.export.streamed), for exporting the structure only;
    `own_dtype`: loaded in its stored dtype (bf16 stays bf16), not fp32."""
    from nimbuild.export.adapters import _load

    check_exportable(checkpoint.config)
    model = _empty_model(checkpoint) if empty else _load("AutoModelForCausalLM", checkpoint, own_dtype)
    config = model.config
    layers = int(config.num_hidden_layers)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return DecoderAdapter(
        task="text-generation", module=_with_past(model), model=model, layers=layers, kv_heads=kv_heads,
        head_dim=head_dim, vocab_size=int(config.vocab_size), eos_ids=eos_token_ids(checkpoint),
        runtime_info={},
    )


def _with_past(model):
    """forward(input_ids, attention_mask, position_ids, *past) -> (last logits, *present)."""
    import torch
    from transformers import DynamicCache

    keeps_last = "logits_to_keep" in inspect.signature(model.forward).parameters

    class DecoderWithPast(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask, position_ids, *past):
            # a cache of full layers, also for sliding-window ones: the graph's present is always
            # past + new (the flat layout), and the window is applied by the mask (module docstring)
            cache = filled_cache(DynamicCache(), past)
            extra = {"logits_to_keep": 1} if keeps_last else {}
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          past_key_values=cache, use_cache=True, **extra)
            return (out.logits[:, -1:, :], *flat_cache(out.past_key_values))

    return DecoderWithPast(model)


def _empty_model(checkpoint: HFCheckpoint):
    """The checkpoint's architecture from its config, buffers computed, parameters placeholders."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from nimbuild.export.streamed import empty_parameters

    config = AutoConfig.from_pretrained(checkpoint.path, local_files_only=True)
    with init_empty_weights(include_buffers=False):  # parameters on the meta device, buffers real
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.tie_weights()  # tied on the meta device they come apart; the loaded model's are one
    empty_parameters(model)
    return model.eval()


def weight_stream(checkpoint: HFCheckpoint, reporter: Reporter):
    """(the empty adapter, streamed.attach bound to the checkpoint) where the weights are streamed
    from the checkpoint into the graph (nimbuild.export.streamed: fp32 weights over
    EXTERNAL_WEIGHTS_FROM in safetensors named as the model names them), else None."""
    from functools import partial

    from nimbuild.export.reference import EXTERNAL_WEIGHTS_FROM
    from nimbuild.export.streamed import CheckpointTensors, attach, parameter_sources

    tensors = CheckpointTensors.of(checkpoint.path)
    if tensors is None or tensors.fp32_bytes() <= EXTERNAL_WEIGHTS_FROM:
        return None
    empty = load_decoder(checkpoint, empty=True)
    sources = parameter_sources(empty.module, tensors, strip="lm.", base=empty.model.base_model_prefix)
    if isinstance(sources, str):
        reporter.debug(f"weights exported from the loaded model: {sources}")
        return None
    return empty, partial(attach, sources=sources, tensors=tensors)


def filled_cache(cache, flat):
    """A transformers cache holding the graph's flat key, value, key, value... tensors (cache_names'
    order), one layer per pair."""
    for layer in range(len(flat) // 2):
        cache.update(flat[2 * layer], flat[2 * layer + 1], layer)
    return cache


def flat_cache(cache) -> list:
    """A transformers cache's tensors in the graph's flat order (filled_cache's inverse)."""
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]


def eos_token_ids(checkpoint: HFCheckpoint) -> list[int]:
    """generation_config.json's end-of-sequence ids (what generate() stops on), else config.json's."""
    generation = checkpoint.read_json("generation_config.json") or {}
    value = generation.get("eos_token_id", checkpoint.config.get("eos_token_id"))
    values = value if isinstance(value, list) else [value]
    return sorted({int(v) for v in values if v is not None})


def context_limits(recipe_inputs: dict[str, dict[str, DimRange]]) -> tuple[DimRange, DimRange]:
    """(batch, context) ranges from the recipe's `input_ids: {batch, sequence}`; sequence max is the
    context length (prompt plus generated tokens) the profile serves. The model's own position
    limit is checked by the caller, as for every task."""
    unknown = [name for name in recipe_inputs if name != "input_ids"]
    if unknown:
        raise ExportError(f"export.inputs: text-generation takes input_ids only (the cache inputs follow from it); "
                          f"remove {', '.join(unknown)}")
    dims = recipe_inputs.get("input_ids") or {}
    if len(dims) != 2:
        raise ExportError("export.inputs.input_ids: give two axes, batch and sequence (the context length)")
    batch, context = dims.values()
    if context.max < 8:
        raise ExportError(f"export.inputs.input_ids.{list(dims)[1]}: max {context.max} leaves no room to generate; give 8 or more")
    return batch, context


def grouped_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Eager attention over grouped-query heads without repeating the key and value heads: the
    query heads that share a key head are stacked along the query axis ([B, kv_heads, groups * S,
    D]), so both products read the cache as it is and the key's transpose folds into the MatMul.
    Heads are grouped as `repeat_kv` groups them (query head h reads key head h // groups). The mask
    is transformers' additive eager mask, which already holds causality, padding and any sliding
    window. Logit soft-capping (Gemma 2: `softcap`, tanh(scores / cap) * cap before the mask) is
    applied here as transformers' eager attention applies it; attention sinks (`s_aux`), which no
    family of the table has, go to SDPA."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kwargs.get("s_aux") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    batch, heads, length, dim = query.shape
    kv_heads, total = key.shape[1], key.shape[2]
    scale = scaling if scaling is not None else dim ** -0.5
    scores = torch.matmul(query.reshape(batch, kv_heads, -1, dim), key.transpose(2, 3)) * scale
    scores = scores.reshape(batch, heads, length, total)
    if (softcap := kwargs.get("softcap")) is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, :total]
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(weights.reshape(batch, kv_heads, -1, total), value)
    return out.reshape(batch, heads, length, dim).transpose(1, 2).contiguous(), None


def dense_experts(module, hidden_states, top_k_index, top_k_weights):
    """Mixture-of-experts as a graph can run it: every expert on every token, each output weighted
    by the token's router weight for that expert (0 where the router did not pick it), summed in
    expert order. transformers' default (`grouped_mm`) does not export, its eager loop branches on
    which experts were hit, and `batched_mm` gathers a copy of an expert's weights per token and
    pick ([tokens * k, out, in]: gigabytes per layer for a real Mixtral prefill); this form reads
    each expert's weights once per call at E / k times the useful multiply work. Registered with
    transformers' experts interface, so the model's own router chooses the top-k."""
    import torch

    experts = module.num_experts
    chosen = top_k_index[..., None] == torch.arange(experts, device=top_k_index.device)  # [tokens, k, experts]
    routing = (chosen.to(top_k_weights.dtype) * top_k_weights[..., None]).sum(dim=1)  # [tokens, experts]
    out = torch.zeros_like(hidden_states)
    up_weights = module.gate_up_proj if module.has_gate else module.up_proj
    up_biases = (module.gate_up_proj_bias if module.has_gate else module.up_proj_bias) if module.has_bias else None
    for e in range(experts):
        hidden = _expert_linear(hidden_states, up_weights[e], up_biases[e] if up_biases is not None else None,
                                module.is_transposed)
        hidden = module._apply_gate(hidden) if module.has_gate else module.act_fn(hidden)
        hidden = _expert_linear(hidden, module.down_proj[e], module.down_proj_bias[e] if module.has_bias else None,
                                module.is_transposed)
        if module.has_post_expert_norm:
            hidden = module.post_expert_norm(hidden)
        out = out + hidden * routing[:, e:e + 1]
    return out.to(hidden_states.dtype)


def _expert_linear(x, weight, bias, transposed: bool):
    import torch

    out = torch.matmul(x, weight) if transposed else torch.nn.functional.linear(x, weight)
    return out + bias if bias is not None else out


def per_row_longrope(rotary, x, position_ids):
    """`longrope` rotary embeddings with the short or long factors chosen per sequence. transformers
    picks them from the largest position in the whole batch, so a request's answer would depend on
    what it is batched with; per row, every row gets what `generate` gives it alone (left padding
    has position 0, so a row's largest position is its own)."""
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    switch = rope_switch(rotary.config.to_dict())
    long_freq, _ = ROPE_INIT_FUNCTIONS["longrope"](rotary.config, x.device, seq_len=switch + 1)
    longer = (position_ids.max(dim=-1, keepdim=True).values + 1 > switch)[..., None]  # [B, 1, 1]
    inv_freq = torch.where(longer, long_freq.to(x.device), rotary.original_inv_freq.to(x.device))  # [B, 1, D/2]
    freqs = position_ids[..., None].float() * inv_freq.float()
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * rotary.attention_scaling).to(x.dtype), (emb.sin() * rotary.attention_scaling).to(x.dtype)


@contextlib.contextmanager
def forms_for_export(model):
    """Inside the block `model` attends through grouped_attention, runs its experts densely and
    picks longrope factors per row; after it, it is as before (parity compares the graph with
    transformers' own forms). A model that cannot switch a form is exported with the one it has."""
    import types

    from transformers import AttentionInterface
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(GROUPED_ATTENTION, grouped_attention)
    AttentionMaskInterface.register(GROUPED_ATTENTION, eager_mask)
    ALL_EXPERTS_FUNCTIONS.register(DENSE_EXPERTS, dense_experts)
    restore = []
    before = model.config._attn_implementation
    with contextlib.suppress(ValueError, KeyError, AttributeError):  # an architecture outside the attention interface
        model.set_attn_implementation(GROUPED_ATTENTION)
    if model.config._attn_implementation == GROUPED_ATTENTION:
        restore.append(lambda: model.set_attn_implementation(before))
    experts_before = getattr(model.config, "_experts_implementation", None)
    with contextlib.suppress(ValueError, KeyError, AttributeError):  # a model without experts
        model.set_experts_implementation(DENSE_EXPERTS)
    if getattr(model.config, "_experts_implementation", None) == DENSE_EXPERTS:
        restore.append(lambda: model.set_experts_implementation(experts_before))
    if rope_switch(model.config.to_dict()):
        for rotary in (m for m in model.modules() if hasattr(m, "original_inv_freq") and hasattr(m, "attention_scaling")):
            rotary.forward = types.MethodType(per_row_longrope, rotary)
            restore.append(lambda rotary=rotary: delattr(rotary, "forward"))
    try:
        yield
    finally:
        for undo in reversed(restore):
            undo()


def export_decoder(adapter: DecoderAdapter, batch: DimRange, context: DimRange, path: Path, opset: int,
                   export_fn, extra: tuple = ()) -> None:
    """Export with batch, new-token, past and total lengths as dynamic axes, attention through
    grouped_attention. `export_fn` is the generic exporter's (module, example, names,
    dynamic_shapes) runner, which strips debug data. `extra` are further inputs after
    position_ids, as (name, example tensor, {axis: "batch"} or {}) (a LoRA graph's)."""
    import torch

    Dim = torch.export.Dim
    b = Dim("batch", min=batch.min, max=batch.max) if batch.max > batch.min else None
    seq = Dim("sequence", min=1, max=context.max)
    past = Dim("past_sequence", min=0, max=context.max - 1)
    total = Dim("total_sequence", min=1, max=context.max)
    rows, new, old = (2 if b else batch.min), 3, 4  # example sizes: none may be 0 or 1 (the exporter would specialise)

    def axes(named: dict) -> dict:
        return {axis: dim for axis, dim in named.items() if dim is not None}

    example = (
        torch.ones(rows, new, dtype=torch.long), torch.ones(rows, old + new, dtype=torch.long),
        torch.arange(old, old + new).expand(rows, new).contiguous(),
        *(torch.zeros(rows, adapter.kv_heads, old, adapter.head_dim) for _ in adapter.past_names),
    )
    # the module's forward takes (input_ids, attention_mask, position_ids, *rest): the extra inputs
    # and the cache are one varargs tuple
    dynamic = (axes({0: b, 1: seq}), axes({0: b, 1: total}), axes({0: b, 1: seq}),
               (*(axes({axis: b for axis in named}) for _, _, named in extra),
                *(axes({0: b, 2: past}) for _ in adapter.past_names)))
    example = (*example[:3], *(tensor(rows) for _, tensor, _ in extra), *example[3:])
    names = [*GRAPH_INPUTS, *(name for name, _, _ in extra), *adapter.past_names]
    with forms_for_export(adapter.model):
        export_fn(adapter.module, example, names, adapter.output_names, dynamic)


def parity_prompts(vocab_size: int, context: int, crossings: list[int] = ()) -> list[list[int]]:
    """Seeded prompts: one token, a short one, and one reaching a third of the context; and for each
    length where what the model attends to changes (a sliding window, a rope switch), one whose
    generation crosses it and one whose prompt already has."""
    rng = np.random.default_rng(PROMPT_SEED)
    lengths = {1, min(7, context // 4), max(2, context // 3)}
    for length in crossings:
        lengths |= {n for n in (length - PARITY_NEW // 2, length + 4) if 1 <= n <= context - PARITY_NEW}
    return [rng.integers(0, vocab_size, size=n).tolist() for n in sorted(lengths)]


@dataclass
class Recorded:
    """What the source model answered, recorded before it is freed (docs/design.md §17): every
    check after the export (the graph's parity, the weight-only variants' gates) works from this,
    so the source and an onnxruntime session are never in memory together."""

    prompts: list[list[int]]
    budgets: list[int]  # greedy tokens asked for per prompt
    tokens: list[list[int]]  # transformers' greedy continuation of each prompt
    logits: list[np.ndarray]  # [steps, vocab] per prompt, fp32
    held: list[list[int]] = field(default_factory=list)  # held token sequences perplexity is measured on
    held_nll: float | None = None  # the source's mean negative log-likelihood per predicted held token
    dtype: str = "float32"  # what the source computed in


def record_source(adapter: DecoderAdapter, context: int, held: list[list[int]]) -> Recorded:
    """transformers' greedy tokens and logits on the parity prompts, and its likelihood of the held
    sequences (when any are given: the weight-only variants' perplexity gate needs them)."""
    config = adapter.model.config.to_dict()
    prompts = parity_prompts(adapter.vocab_size, context, boundaries(config, context))
    budgets = [min(PARITY_NEW, context - len(p)) for p in prompts]
    answers = [_transformers_greedy(adapter, p, n) for p, n in zip(prompts, budgets)]
    return Recorded(prompts, budgets, [t for t, _ in answers], [np.stack(steps) for _, steps in answers], held,
                    _source_nll(adapter.model, held) if held else None, str(adapter.model.dtype).removeprefix("torch."))


def release_source(adapter: DecoderAdapter) -> None:
    """Free the transformers model (the graph's checks use what record_source kept)."""
    import gc

    adapter.model = adapter.module = None
    gc.collect()


def _source_nll(model, sequences: list[list[int]]) -> float:
    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for ids in sequences:
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
            picked = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(ids[1:])[:, None])
            total, count = total - float(picked.sum()), count + len(ids) - 1
    return total / max(count, 1)


def graph_nll(graph, sequences: list[list[int]], recompute_at: int | None = None) -> float:
    """The graph's mean negative log-likelihood of each sequence's tokens after the first, fed one
    at a time through the cache as serving feeds them (the graph returns the last position only)."""
    from nimbuild.serving.generation import greedy

    total, count = 0.0, 0
    for ids in sequences:
        steps: list[np.ndarray] = []
        greedy(graph, ids[:1], len(ids) - 1, on_logits=steps.append, recompute_at=recompute_at, forced=ids[1:])
        for logits, token in zip(steps, ids[1:]):
            shifted = logits.astype(np.float64) - logits.max()
            total += float(np.log(np.exp(shifted).sum()) - shifted[token])
        count += len(ids) - 1
    return total / max(count, 1)


def held_sequences(checkpoint: HFCheckpoint, texts: list[str], vocab_size: int, context: int) -> list[list[int]]:
    """The held text the weight-only variants' perplexity is measured on: the recipe's
    `export.texts` through the checkpoint's tokenizer, or, without texts, seeded token sequences
    (for a random-weight checkpoint these say as much as text)."""
    limit = min(context, HELD_TOKENS)
    if not texts:
        rng = np.random.default_rng(PROMPT_SEED + 1)
        return [rng.integers(0, vocab_size, size=min(64, limit)).tolist() for _ in range(2)]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint.path, local_files_only=True)
    sequences = [tokenizer(text)["input_ids"][:limit] for text in texts]
    return [s for s in sequences if len(s) >= 2]


def check_generation_parity(adapter: DecoderAdapter, onnx_path: Path, context: int, batch_max: int, tolerance) -> Comparison:
    """Greedy tokens and per-step logits through the graph against transformers.generate's
    (recorded first, record_source); refuse on mismatch."""
    from nimbuild.export.reference import open_session
    from nimbuild.serving.generation import DecoderGraph, Generator, SamplingParams, Sequence, greedy

    recorded = adapter.recorded
    graph = DecoderGraph(open_session(onnx_path))
    comparison = Comparison(atol=tolerance.atol, rtol=tolerance.rtol, cosine_min=tolerance.cosine_min)
    recompute_at = adapter.runtime_info.get("recompute_cache_at")
    problems = []
    for prompt, new, expected, expected_logits in zip(recorded.prompts, recorded.budgets, recorded.tokens,
                                                      recorded.logits):
        got_logits: list[np.ndarray] = []
        got = greedy(graph, prompt, new, adapter.eos_ids, on_logits=got_logits.append, recompute_at=recompute_at)
        steps = min(len(got_logits), len(expected_logits))
        comparison.add(f"prompt {len(prompt)}", {"logits": expected_logits[:steps]},
                       {"logits": np.stack(got_logits[:steps])})
        if got != expected:
            problems.append(first_difference(f"prompt of {len(prompt)} tokens", expected, got))
    # the runtime batches: the same prompts together, left-padded, must give the same tokens
    generator = Generator(graph, max_batch=max(1, batch_max), max_context=context, eos_ids=adapter.eos_ids,
                          recompute_at=recompute_at)
    sequences = [Sequence(p, SamplingParams(max_tokens=n)) for p, n in zip(recorded.prompts, recorded.budgets)]
    for s in sequences:
        generator.add(s)
    while generator.busy:
        generator.step()
    for s, expected in zip(sequences, recorded.tokens):
        if s.tokens != expected:
            problems.append(first_difference(f"prompt of {len(s.prompt)} tokens, batched", expected, s.tokens))
    if problems or not comparison.passed:
        raise ParityError("the exported decoder does not generate what transformers generates:\n"
                          + "\n".join(problems + [comparison.describe()]))
    comparison.notes = {"greedy_tokens_compared": sum(len(e) for e in recorded.tokens), "prompts": len(recorded.prompts)}
    return comparison


def _transformers_greedy(adapter: DecoderAdapter, prompt: list[int], new: int) -> tuple[list[int], list[np.ndarray]]:
    import torch
    from transformers import GenerationConfig

    # a fresh config: the checkpoint's own may sample or penalise repeats, and parity is about greedy
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=new, min_new_tokens=0,
                              eos_token_id=adapter.eos_ids or None,
                              pad_token_id=(adapter.eos_ids or [0])[0])
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = adapter.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                     output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[0, len(prompt):].tolist()
    return tokens, [step[0].float().numpy() for step in out.logits]


def first_difference(what: str, expected: list[int], got: list[int]) -> str:
    at = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
    return (f"  {what}: greedy tokens differ at step {at}: transformers {expected[at:at + 4]}..., "
            f"graph {got[at:at + 4]}... ({len(expected)} vs {len(got)} tokens)")


def export(checkpoint: HFCheckpoint, recipe: Recipe, dest: Path, reporter: Reporter) -> ReferenceExport:
    """A decoder-only LM with its KV cache (nimbuild.export.llm)."""
    weight_only = {"int4", "int8"} & set(recipe.precisions)  # their gates measure perplexity on held text
    if recipe.export.texts and not weight_only:
        raise ExportError("export.texts: a text-generation recipe's texts are the held text its int4 and int8 "
                          "variants' perplexity is measured on; this recipe builds neither")
    batch, context = context_limits(recipe.export.inputs)
    specs = [InputSpec("input_ids", dict(recipe.export.inputs["input_ids"]))]
    check_sequence_limit(specs, checkpoint)
    # onnxruntime targets only, none fp32: the fp32 graph is served by nothing, so it is not opened (a
    # 7B's is 29 GB), and the source is recorded in its own dtype; each variant's gate judges what it
    # serves against that record (engine targets keep the fp32 check: their gates were proved with it)
    unserved = all(t.type == "generic" and "fp32" not in t.precisions for t in recipe.targets)
    gates = [recipe.precision_spec(p).gate for t in recipe.targets for p in t.precisions]
    if unserved and not all(gate is None or gate.evaluate for gate in gates):
        raise ExportError("no target builds fp32, so the fp32 graph is not checked, and a variant's gate is off "
                          "(gate.evaluate: false): nothing would check what it serves; build fp32 or gate the variant")
    stream = weight_stream(checkpoint, reporter)
    # the stored dtype only where the weights are streamed: a loaded model is also what is exported,
    # and the exported graph is fp32 (a small checkpoint's bf16 costs nothing to widen)
    own_dtype = unserved and stream is not None
    with reporter.step(f"load {checkpoint.model_type} checkpoint for {recipe.task}"
                       + (" in its own dtype" if own_dtype else "")):
        adapter = load_decoder(checkpoint, own_dtype=own_dtype)
    adapter.runtime_info = {
        "max_sequence_length": context.max, "max_batch": batch.max, "eos_token_ids": adapter.eos_ids,
        "kv_cache": {"layers": adapter.layers, "heads": adapter.kv_heads, "head_dim": adapter.head_dim},
    }
    if (switch := rope_switch(checkpoint.config)) and switch < context.max:
        # longrope: transformers re-encodes a sequence whole when it first grows past the switch
        adapter.runtime_info["recompute_cache_at"] = switch
    dest.mkdir(parents=True, exist_ok=True)
    onnx_path = dest / "model.onnx"
    opset, metadata = recipe.export.opset, graph_metadata(recipe, checkpoint, adapter)
    held = held_sequences(checkpoint, recipe.export.texts, adapter.vocab_size, context.max) if weight_only else []
    if stream is not None:  # the weights go from the checkpoint to the graph: the source can go first
        _record(adapter, context.max, held, reporter)
        adapter.module, adapter.model = stream[0].module, stream[0].model
    with reporter.step(f"export reference ONNX with KV cache (opset {opset})"
                       + (", weights streamed from the checkpoint" if stream else "")):
        export_decoder(adapter, batch, context, onnx_path, opset,
                       lambda *args: run_exporter(*args, onnx_path, opset, metadata, reporter,
                                                  streamed=stream and stream[1]))
        check_graph(onnx_path, opset)
    if stream is None:
        _record(adapter, context.max, held, reporter)
    else:
        adapter.module = adapter.model = None
    if unserved:
        comparison = _unchecked(recipe.export.parity, adapter)
    else:
        with reporter.step("check greedy generation against transformers"):
            comparison = check_generation_parity(adapter, onnx_path, context.max, batch.max, recipe.export.parity)
    reporter.debug(comparison.describe())
    return reference(onnx_path, specs, adapter, comparison)


def _unchecked(tolerance, adapter: DecoderAdapter) -> Comparison:
    """The fp32 graph's record where no fp32 profile is built: not opened, and why."""
    comparison = Comparison(atol=tolerance.atol, rtol=tolerance.rtol, cosine_min=tolerance.cosine_min)
    comparison.notes = {"fp32_graph": "not checked: no fp32 profile is built; each variant's gate compares what "
                                      f"it serves with the source's record ({adapter.recorded.dtype})"}
    return comparison


def _record(adapter: DecoderAdapter, context: int, held: list[list[int]], reporter: Reporter) -> None:
    with reporter.step("record transformers' greedy generation" + (" and held-text likelihood" if held else "")):
        adapter.recorded = record_source(adapter, context, held)
        release_source(adapter)  # the source and the onnxruntime session are never held together


def serving_memory_mib(workspace: Path, runtime_info: dict, cache_element_bytes: int) -> int:
    """Memory a served profile holds, in MiB: its weights (the workspace's files, the tokenizer's
    aside) and a full KV cache for every row of its largest batch at its whole context (the
    runtime's cache grows to that; selection reads it as the profile's need, docs/design.md §17)."""
    weights = sum(f.stat().st_size for f in workspace.rglob("*") if f.is_file() and "tokenizer" not in f.parts)
    kv = runtime_info.get("kv_cache") or {}
    cache = (2 * kv.get("layers", 0) * kv.get("heads", 0) * kv.get("head_dim", 0) * cache_element_bytes
             * runtime_info.get("max_sequence_length", 0) * runtime_info.get("max_batch", 1))
    return -(-(weights + cache) // 2**20)


def unproved(checkpoint: HFCheckpoint) -> str | None:
    """Why `recipe init` does not pick text generation for this decoder by itself (no family row)."""
    return families.unproved(checkpoint.config)


def starter(checkpoint: HFCheckpoint) -> Starter:
    """A context of up to 2,048 tokens (or the model's position limit, if smaller): a start that
    compiles in minutes (parity prompts reach a third of it); raise it to what the profile serves."""
    context = min(positions(checkpoint, 2048), 2048)
    return Starter(engines_refused=families.why_no_trtllm(checkpoint.config) or "",
                   inputs={"input_ids": {"batch": [1, 4, 8], "sequence": [1, min(128, context), context]}},
                   inputs_note=f"sequence max is the context served, prompt plus generated tokens: {context} here; "
                               f"the model has {positions(checkpoint, 0) or 'no stated'} positions")
