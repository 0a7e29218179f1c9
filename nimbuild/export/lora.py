"""A LoRA-capable KV-cache decoder graph (a text-generation target's `lora: {max_rank, targets,
slots}`): the base graph of nimbuild.export.llm with each target module (`q_proj`, `v_proj`, ...)
computing `W x + B[slot] (A[slot] x)` per row, the adapters' A and B coming in as inputs
(nimbuild.serving.lora documents the layout), so one batch mixes rows of different adapters and
rows of none.

Parity: two random adapters of different ranks are written by PEFT itself, read back by the
runtime's own reader, and served together with base rows in one batch through the runtime's
generator; each row's greedy tokens must equal transformers' greedy generation from PEFT's merged
model (the base rows: from the plain model), token for token.
"""

from __future__ import annotations

import functools
import re
import tempfile
import warnings
from pathlib import Path

from nimbuild.errors import ExportError, ParityError
from nimbuild.serving.lora import SLOT_INPUT, AdapterBank, input_names

PEFT_SEED = 4242


def export_lora(checkpoint, recipe, target, dest: Path, reporter) -> tuple[Path, dict, dict]:
    """The LoRA-capable graph for a target's `lora` section, checked against PEFT: (graph, the
    runtime's LoRA description, the parity record)."""
    from nimbuild.export.llm import context_limits, export_decoder, load_decoder
    from nimbuild.export.reference import check_graph, graph_metadata, run_exporter

    batch, context = context_limits(recipe.export.inputs)
    with reporter.step("load the checkpoint for its LoRA graph"):
        adapter = load_decoder(checkpoint)
        spec = lora_spec(adapter.model, target)
        with_lora(adapter, spec)
    dest.mkdir(parents=True, exist_ok=True)
    path, opset = dest / "model.onnx", recipe.export.opset
    metadata = graph_metadata(recipe, checkpoint, adapter)
    with reporter.step(f"export the LoRA graph ({len(spec['targets'])} targets, rank {spec['max_rank']}, "
                       f"{spec['slots']} slots)"):
        export_decoder(adapter, batch, context, path, opset,
                       lambda *args: run_exporter(*args, path, opset, metadata, reporter), extra_inputs(spec))
        check_graph(path, opset)
    with reporter.step("check two PEFT adapters and the base, batched, against transformers"):
        record = check_lora_parity(adapter, checkpoint.path, path, spec, context.max)
    return path, spec, record


def lora_spec(model, target) -> dict:
    """The runtime's description of the LoRA inputs for `model` and a recipe's `lora` section:
    layers, slots, the rank adapters are padded to, and each target's (in, out) widths."""
    layers = int(model.config.num_hidden_layers)
    shapes = {}
    for name in target.targets:
        found = _modules(model, name)
        if len(found) != layers:
            raise ExportError(f"lora.targets: {name!r} is not a linear module of each of the model's {layers} layers "
                              f"(found in {len(found)}); its layers' linear modules are "
                              f"{', '.join(sorted(_linear_names(model)))}")
        widths = {(m.in_features, m.out_features) for m in found.values()}
        if len(widths) != 1:
            raise ExportError(f"lora.targets: {name!r} differs in shape between layers")
        shapes[name] = list(widths.pop())
    return {"max_rank": target.max_rank, "slots": target.slots, "targets": list(target.targets), "layers": layers,
            "shapes": shapes}


def _modules(model, name: str) -> dict[int, object]:
    import torch

    found = {}
    for path, module in model.named_modules():
        match = re.search(rf"layers\.(\d+)\.(?:.*\.)?{re.escape(name)}$", path)
        if match and isinstance(module, torch.nn.Linear):
            found[int(match.group(1))] = module
    return found


def _linear_names(model) -> set[str]:
    import torch

    return {path.rsplit(".", 1)[-1] for path, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and re.search(r"layers\.\d+\.", path)}


def with_lora(adapter, spec: dict):
    """`adapter` (a DecoderAdapter) with its target modules reading adapters from the graph's
    inputs; its module's forward takes (input_ids, attention_mask, position_ids, lora_slot,
    lora_A/B..., *past). With no LoRA inputs set, the patched model is the plain one (for
    transformers' own generation in the parity check)."""
    import torch

    inputs = _LoraInputs()
    for name in spec["targets"]:
        for layer, linear in _modules(adapter.model, name).items():
            parent = adapter.model.get_submodule(_path_of(adapter.model, linear).rsplit(".", 1)[0])
            setattr(parent, name, _LoraLinear(linear, inputs, name, layer))
    base = adapter.module
    count = 2 * len(spec["targets"])

    class DecoderWithLora(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.base = base

        def forward(self, input_ids, attention_mask, position_ids, *rest):
            slot, weights, past = rest[0], rest[1:1 + count], rest[1 + count:]
            inputs.set(slot, dict(zip(input_names(spec)[1:], weights)))
            try:
                return self.base(input_ids, attention_mask, position_ids, *past)
            finally:
                inputs.clear()

    adapter.module = DecoderWithLora()
    return adapter


def _path_of(model, module) -> str:
    return next(path for path, m in model.named_modules() if m is module)


class _LoraInputs:
    def __init__(self):
        self.clear()

    def set(self, slot, weights):
        self.slot, self.weights = slot, weights

    def clear(self):
        self.slot, self.weights = None, {}


@functools.cache
def _lora_linear_class():
    """The module class, made once on first use (torch is imported only by an export that needs it)."""
    import torch

    class LoraLinear(torch.nn.Module):
        def __init__(self, linear, inputs, target, layer):
            super().__init__()
            self.linear, self.inputs, self.target, self.layer = linear, inputs, target, layer

        def forward(self, x):
            out = self.linear(x)
            if self.inputs.slot is None:
                return out
            a = self.inputs.weights[f"lora_A.{self.target}"][self.layer][self.inputs.slot]  # [batch, rank, in]
            b = self.inputs.weights[f"lora_B.{self.target}"][self.layer][self.inputs.slot]  # [batch, out, rank]
            return out + torch.matmul(torch.matmul(x, a.transpose(1, 2)), b.transpose(1, 2))

    return LoraLinear


def _LoraLinear(linear, inputs, target, layer):  # noqa: N802 - a class made lazily (torch is imported on use)
    return _lora_linear_class()(linear, inputs, target, layer)


def extra_inputs(spec: dict) -> tuple:
    """export_decoder's `extra`: the slot per row (batch axis) and each target's A and B stacks."""
    import torch

    slots = spec["slots"] + 1
    extra = [(SLOT_INPUT, lambda rows: torch.zeros(rows, dtype=torch.long), {0: "batch"})]
    for target in spec["targets"]:
        d_in, d_out = spec["shapes"][target]
        extra.append((f"lora_A.{target}", lambda rows, d=d_in: torch.zeros(spec["layers"], slots, spec["max_rank"], d), {}))
        extra.append((f"lora_B.{target}", lambda rows, d=d_out: torch.zeros(spec["layers"], slots, d, spec["max_rank"]), {}))
    return tuple(extra)


def check_lora_parity(adapter, checkpoint_path: Path, onnx_path: Path, spec: dict, context: int) -> dict:
    """Two PEFT adapters and the base, rows of one batch, each equal to transformers' greedy tokens
    (PEFT's merged model for an adapter); the record for the profile's verification."""
    from nimbuild.export.llm import PARITY_NEW, _transformers_greedy, first_difference, parity_prompts
    from nimbuild.export.reference import open_session
    from nimbuild.serving.generation import DecoderGraph, Generator, SamplingParams, Sequence

    prompts = parity_prompts(adapter.vocab_size, context)[:2]
    new = [min(PARITY_NEW, context - len(p)) for p in prompts]
    ranks = {"parity-a": spec["max_rank"], "parity-b": max(1, spec["max_rank"] // 2)}
    with tempfile.TemporaryDirectory(prefix="nimbuild-lora-") as tmp:
        source = Path(tmp)
        expected = {None: [_transformers_greedy(adapter, p, n)[0] for p, n in zip(prompts, new)]}
        for i, (name, rank) in enumerate(ranks.items()):
            expected[name] = _peft_greedy(checkpoint_path, source / name, spec, rank, PEFT_SEED + i, prompts, new,
                                          adapter.eos_ids)
        graph = DecoderGraph(open_session(onnx_path))
        generator = Generator(graph, max_batch=len(prompts) * 3, max_context=context, eos_ids=adapter.eos_ids,
                              adapters=AdapterBank(spec, source))
        rows = [(name, p, n, Sequence(p, SamplingParams(max_tokens=n, adapter=name)))
                for name in expected for p, n in zip(prompts, new)]
        for *_, sequence in rows:
            generator.add(sequence)
        while generator.busy:
            generator.step()
    problems = []
    for (name, prompt, _, sequence), want in zip(rows, [t for name in expected for t in expected[name]]):
        if sequence.tokens != want:
            problems.append(first_difference(f"{name or 'base'}, prompt of {len(prompt)} tokens, batched", want,
                                             sequence.tokens))
    if problems:
        raise ParityError("the LoRA graph does not generate what PEFT's merged model generates:\n" + "\n".join(problems))
    # an adapter that changed no greedy token would make the comparison prove nothing
    changed = any(expected[name] != expected[None] for name in ranks)
    return {"adapters_compared": len(ranks), "ranks": sorted(ranks.values()), "rows": len(rows),
            "greedy_tokens_compared": sum(len(s.tokens) for *_, s in rows), "adapters_changed_tokens": changed}


def _peft_greedy(checkpoint_path: Path, folder: Path, spec: dict, rank: int, seed: int, prompts, new, eos_ids):
    """Greedy tokens of a fresh copy of the model with a random PEFT adapter (written to `folder`)
    merged into it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, GenerationConfig

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(checkpoint_path, dtype=torch.float32).eval()
    # random A and B (PEFT's default zeroes B, which would make every adapter the base model)
    with warnings.catch_warnings():  # PEFT's deprecation chatter about transformers' internals
        warnings.simplefilter("ignore")
        peft = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=spec["targets"],
                                                init_lora_weights=False))
    with torch.no_grad():
        for name, parameter in peft.named_parameters():
            if "lora_" in name:
                parameter.mul_(0.5)  # a nudge that changes the greedy text without drowning the base
    peft.save_pretrained(folder)
    merged = peft.merge_and_unload().eval()
    config = GenerationConfig(do_sample=False, num_beams=1, min_new_tokens=0, eos_token_id=eos_ids or None,
                              pad_token_id=(eos_ids or [0])[0])
    out = []
    for prompt, n in zip(prompts, new):
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            tokens = merged.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                     generation_config=config)
        out.append(tokens[0, len(prompt):].tolist())
    return out

