"""What the encoder-decoder exporters (translation, Whisper, Canary) share: their graphs' names and
the decoder step's export, and, for transformers' models, generation: the
checkpoint's generation config read into the rules the served greedy loop applies
(nimbuild.serving.seq2seq.DecodingRules), refusing a setting the loop does not reproduce, and
the greedy reference configuration `transformers.generate` is judged with.

A served translation must end as transformers ends it: a model that reaches its length limit
gets the forced end token there, Marian's pad stays banned where its config bans it, Whisper's
suppressed tokens stay suppressed. What the loop does not do is refused at export, never served.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from nimbuild.errors import ExportError
from nimbuild.export.llm import CacheNames
from nimbuild.export.reference import check_graph, graph_metadata, run_exporter
from nimbuild.serving.generation import cache_names
from nimbuild.serving.seq2seq import DecodingRules


class EncoderDecoderNames(CacheNames):
    """An encoder-decoder adapter's flat names (for its `layers` decoder layers): the decoder step's
    self cache, and the cross keys and values the encoder graph returns, which are its outputs."""

    @property
    def cross_names(self) -> list[str]:
        return cache_names("cross", self.layers)

    @property
    def output_names(self) -> list[str]:  # the core graph's (the encoder's)
        return self.cross_names


# generation settings that change greedy tokens and that the loop does not reproduce: each is
# accepted only at a value that does nothing
_INERT: dict[str, tuple] = {
    "repetition_penalty": (None, 1, 1.0), "encoder_repetition_penalty": (None, 1, 1.0),
    "encoder_no_repeat_ngram_size": (None, 0), "sequence_bias": (None,), "guidance_scale": (None, 1, 1.0),
    "exponential_decay_length_penalty": (None,), "min_new_tokens": (None, 0), "renormalize_logits": (None, False),
}


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def decoding_rules(config: Any, where: str, eos: list[int] | None = None) -> DecodingRules:
    """The rules a `transformers.GenerationConfig` implies for greedy decoding. `eos` overrides the
    config's end tokens where the exporter knows better (none does yet beyond the config's)."""
    changed = [f"{name}={getattr(config, name)!r}" for name, inert in _INERT.items()
               if getattr(config, name, None) not in inert]
    if changed:
        raise ExportError(f"{where}: the generation config sets {', '.join(changed)}, which nimbuild's greedy loop does "
                          "not reproduce (served output would differ from transformers'); remove it from "
                          "generation_config.json to serve the model without it")
    ends = eos if eos is not None else _ids(config.eos_token_id)
    if not ends:
        raise ExportError(f"{where}: the generation config names no eos_token_id, so no translation would end")
    # transformers drops bad words that are an end token (NoBadWordsLogitsProcessor)
    bad = [tuple(int(t) for t in words) for words in (config.bad_words_ids or []) if list(words) not in [[e] for e in ends]]
    suppress = tuple(dict.fromkeys([*_ids(config.suppress_tokens), *(words[0] for words in bad if len(words) == 1)]))
    return DecodingRules(eos=tuple(ends), suppress=suppress, bad_sequences=tuple(w for w in bad if len(w) > 1),
                         begin_suppress=tuple(_ids(config.begin_suppress_tokens)),
                         forced_bos=config.forced_bos_token_id, forced_eos=config.forced_eos_token_id,
                         no_repeat_ngram=int(config.no_repeat_ngram_size or 0), min_length=int(config.min_length or 0))


def greedy_reference(config: Any, max_new_tokens: int) -> Any:
    """The checkpoint's generation config with greedy search and this budget: what the served loop
    is checked against. Its beams and sampling are dropped (profiles serve greedy decoding); its
    logits rules stay."""
    reference = copy.deepcopy(config)
    reference.do_sample, reference.num_beams, reference.num_return_sequences = False, 1, 1
    reference.max_new_tokens, reference.max_length = max_new_tokens, None
    for name in ("temperature", "top_p", "top_k", "typical_p", "epsilon_cutoff", "eta_cutoff", "length_penalty",
                 "early_stopping"):
        if hasattr(reference, name):
            setattr(reference, name, None)
    return reference


def cross_keys_values(decoder_layers, hidden) -> tuple:
    """Each decoder layer's cross-attention keys and values [batch, heads, source, dim] for the
    encoder's `hidden` states: what BART-style attention (Marian, Whisper) projects on its first
    cross step, done once per source in the encoder graph instead."""
    out = []
    for layer in decoder_layers:
        attention = layer.encoder_attn
        shape = (*hidden.shape[:-1], -1, attention.head_dim)
        out += [attention.k_proj(hidden).view(shape).transpose(1, 2), attention.v_proj(hidden).view(shape).transpose(1, 2)]
    return tuple(out)


def step_cache(past: tuple, cross: tuple, layers: int):
    """A decoder step's transformers cache from the graph's flat self and cross tensors (the cross
    half marked as computed, so it is reused, not reprojected), and stand-in encoder states of the
    right shape (the decoder reads only their shape once the cross cache is given)."""
    from transformers import DynamicCache, EncoderDecoderCache

    from nimbuild.export.llm import filled_cache

    cache = EncoderDecoderCache(filled_cache(DynamicCache(), past), filled_cache(DynamicCache(), cross))
    cache.is_updated = {i: True for i in range(layers)}
    key = cross[0]
    return cache, key.transpose(1, 2).reshape(key.shape[0], key.shape[2], -1)


def dynamic_axes(named: dict) -> dict:
    """torch.export's axes for one input: those given a Dim (None: fixed by the recipe's range)."""
    return {axis: dim for axis, dim in named.items() if dim is not None}


def export_step_graph(run, module, example: tuple, input_names: list[str], output_names: list[str], dynamic: tuple,
                      dest: Path, rel: str, assets: dict[str, Path]) -> None:
    """The decoder-step graph exported to `dest` (the asset `rel` of the profile), with its external
    data when the weights went there, recorded in `assets`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    run(module, example, input_names, output_names, dynamic, dest)
    assets[rel] = dest
    data = dest.with_name(dest.name + ".data")
    if data.exists():
        assets[rel + ".data"] = data


def export_encoder_decoder(adapter, recipe, checkpoint, export_graphs, onnx_path: Path, decoder: str, reporter) -> None:
    """An encoder-decoder's two graphs exported (`export_graphs(adapter, recipe, onnx_path, run)`: the
    encoder to `onnx_path`, the decoder step to the asset `decoder`) with the recipe's opset and the
    profile's metadata, and both checked."""
    opset, metadata = recipe.export.opset, graph_metadata(recipe, checkpoint, adapter)
    with reporter.step(f"export encoder and KV-cache decoder ONNX (opset {opset})"):
        export_graphs(adapter, recipe, onnx_path, lambda module, example, names, outputs, dynamic, path:
                      run_exporter(module, example, names, outputs, dynamic, path, opset, metadata, reporter))
        check_graph(onnx_path, opset)
        check_graph(adapter.assets[decoder], opset)
