"""Encoder-decoder translation models (Hugging Face MarianMT-class) to two ONNX graphs, checked
against `transformers.generate`.

- model.onnx, the encoder: source ids and mask -> every decoder layer's cross-attention keys and
  values. Projecting them here, once per source, is what a decoder step would otherwise redo for
  every token; it is the profile's core (an onnxruntime graph or a TensorRT-RTX engine).
- translation/decoder.onnx: one step (or several tokens) of the decoder with its self-attention
  KV cache, taking the cross keys and values as inputs; always on onnxruntime (it runs a token at
  a time on growing shapes, which the generation loop drives from Python).

The wrappers hand transformers' own modules an `EncoderDecoderCache` built from the flat tensors
(the cross half marked as already computed), so the graph runs Marian's code, not a rewrite.

Parity is judged on what serving does (nimbuild.serving.seq2seq runs both): on the recipe's texts, the
greedy output through the graphs must equal `generate`'s token for token (a difference names the
text and the first differing step), every step's logits must be within tolerance, and the texts
translated together as one padded batch must give the same tokens again. The runtime's own
tokenisation (nimbuild.serving.translation_text) must equal MarianTokenizer's on the texts and on the
translations' decoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nimbuild.errors import ExportError, ParityError
from nimbuild.export.llm import first_difference, flat_cache
from nimbuild.export.parity import Comparison
from nimbuild.export.reference import (
    InputSpec,
    ReferenceExport,
    Starter,
    positions,
    reference,
)
from nimbuild.export.seq2seq import (
    EncoderDecoderNames,
    cross_keys_values,
    decoding_rules,
    dynamic_axes,
    export_encoder_decoder,
    export_step_graph,
    greedy_reference,
    step_cache,
)
from nimbuild.recipe import Recipe
from nimbuild.serving.seq2seq import DecodingRules
from nimbuild.sources.hf import HFCheckpoint
from nimbuild.util.progress import Reporter

DECODER_GRAPH = "translation/decoder.onnx"
ENCODER_INPUTS = ["input_ids", "attention_mask"]


@dataclass
class TranslationAdapter(EncoderDecoderNames):
    model: Any  # the transformers model, for generate()
    tokenizer: Any  # its MarianTokenizer
    layers: int
    heads: int
    head_dim: int
    start: int  # decoder_start_token_id
    pad: int
    rules: DecodingRules  # what the generation config does to each greedy step
    task: str = "translation"
    runtime_info: dict[str, Any] = field(default_factory=dict)
    assets: dict[str, Path] = field(default_factory=dict)


def limits(recipe_inputs: dict) -> tuple[Any, Any, int]:
    """(batch, source sequence) ranges from `input_ids: {batch, sequence}`, and the most tokens a
    translation may have (`decoder_input_ids`'s sequence max; twice the source's if not given)."""
    unknown = [n for n in recipe_inputs if n not in ("input_ids", "decoder_input_ids")]
    if unknown or "input_ids" not in recipe_inputs:
        raise ExportError("export.inputs: a translation model takes input_ids {batch, sequence} (the source) and "
                          f"optionally decoder_input_ids {{batch, sequence}} (the translation's length); got "
                          f"{', '.join(recipe_inputs)}")
    for name, dims in recipe_inputs.items():
        if len(dims) != 2:
            raise ExportError(f"export.inputs.{name}: give two axes, batch and sequence")
    batch, source = recipe_inputs["input_ids"].values()
    target = recipe_inputs.get("decoder_input_ids")
    return batch, source, (list(target.values())[1].max if target else 2 * source.max)


def check_languages(checkpoint: HFCheckpoint, recipe) -> tuple[str, str]:
    """The recipe's `serving.languages`, refused when the tokenizer records another pair."""
    config = checkpoint.read_json("tokenizer_config.json") or {}
    theirs = (config.get("source_lang"), config.get("target_lang"))
    ours = (recipe.serving.languages.source, recipe.serving.languages.target)
    if all(theirs) and [str(t).split("-")[0].lower() for t in theirs] != [o.split("-")[0].lower() for o in ours]:
        raise ExportError(f"serving.languages {ours[0]} -> {ours[1]} disagrees with the tokenizer's "
                          f"{theirs[0]} -> {theirs[1]} ({checkpoint.path}/tokenizer_config.json)")
    return ours


def load_adapter(checkpoint: HFCheckpoint, recipe) -> TranslationAdapter:
    from nimbuild.export.adapters import _load

    if not (checkpoint.path / "source.spm").is_file():
        raise ExportError(f"{checkpoint.path}: no source.spm; nimbuild serves MarianMT-class checkpoints "
                          "(SentencePiece source.spm, target.spm and vocab.json)")
    if (checkpoint.read_json("tokenizer_config.json") or {}).get("separate_vocabs"):
        raise ExportError(f"{checkpoint.path}: a Marian tokenizer with separate source and target vocabularies is not "
                          "served yet (the runtime reads one vocab.json)")
    model = _load("AutoModelForSeq2SeqLM", checkpoint)
    config = model.config
    if not getattr(config, "is_encoder_decoder", False) or model.config.model_type != "marian":
        raise ExportError(f"{checkpoint.path}: {config.model_type} is not a MarianMT model; translation profiles "
                          "are built from MarianMT-class encoder-decoders")
    tokenizer = _tokenizer(checkpoint)
    batch, source, target = limits(recipe.export.inputs)
    positions = int(config.max_position_embeddings)
    if max(source.max, target) > positions:
        raise ExportError(f"export.inputs: {max(source.max, target)} tokens exceed the model's {positions} positions")
    layers, heads = int(config.decoder_layers), int(config.decoder_attention_heads)
    source_lang, target_lang = check_languages(checkpoint, recipe)
    adapter = TranslationAdapter(
        model=model, tokenizer=tokenizer, layers=layers, heads=heads, head_dim=int(config.d_model) // heads,
        start=int(config.decoder_start_token_id), pad=int(config.pad_token_id),
        rules=decoding_rules(model.generation_config, f"{checkpoint.path}"),
    )
    from nimbuild.serving.translation_text import MarianText

    text = MarianText(checkpoint.path)
    adapter.runtime_info = {
        "model_class": type(model).__name__, "source_language": source_lang, "target_language": target_lang,
        "max_source_tokens": source.max, "max_output_tokens": target, "max_batch": batch.max,
        "decoder_start_token_id": adapter.start, "eos_token_id": adapter.rules.eos[0], "pad_token_id": adapter.pad,
        "generation": adapter.rules.record(),
        "banned_token_ids": list(adapter.rules.suppress),  # what runtimes before `generation` read
        "dnt_placeholders": text.placeholders, "decoder": DECODER_GRAPH,
        "kv_cache": {"layers": layers, "heads": heads, "head_dim": adapter.head_dim},
    }
    return adapter


def _tokenizer(checkpoint: HFCheckpoint):
    from transformers import MarianTokenizer

    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Recommended: pip install sacremoses": Marian's text cleaner, unused
            return MarianTokenizer.from_pretrained(checkpoint.path, local_files_only=True)
    except Exception as e:
        raise ExportError(f"{checkpoint.path}: MarianTokenizer cannot load it: {e}") from None


def encoder_module(adapter: TranslationAdapter):
    import torch

    model = adapter.model

    class EncoderWithCross(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            hidden = self.model.model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return cross_keys_values(self.model.model.decoder.layers, hidden)

    return EncoderWithCross()


def decoder_module(adapter: TranslationAdapter):
    import torch

    model, layers = adapter.model, adapter.layers

    class DecoderWithPast(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, encoder_attention_mask, *kv):
            cache, states = step_cache(kv[:2 * layers], kv[2 * layers:], layers)
            out = self.model.model.decoder(input_ids=input_ids, encoder_hidden_states=states,
                                           encoder_attention_mask=encoder_attention_mask, past_key_values=cache,
                                           use_cache=True)
            logits = self.model.lm_head(out.last_hidden_state[:, -1:, :]) + self.model.final_logits_bias
            return (logits, *flat_cache(out.past_key_values.self_attention_cache))

    return DecoderWithPast()


def export_graphs(adapter: TranslationAdapter, recipe, path: Path, run_exporter) -> None:
    """The encoder as `path`, the decoder into the translation/ assets. `run_exporter(module,
    example, input_names, output_names, dynamic_shapes, path)` is the generic exporter's."""
    import torch

    batch, source, target = limits(recipe.export.inputs)
    Dim = torch.export.Dim
    b = Dim("batch", min=batch.min, max=batch.max) if batch.max > batch.min else None
    s = Dim("sequence", min=source.min, max=source.max) if source.max > source.min else None
    rows, length = (2 if b else batch.min), (min(max(source.opt, 2), source.max) if s else source.min)

    ids = torch.ones(rows, length, dtype=torch.long)
    run_exporter(encoder_module(adapter), (ids, torch.ones_like(ids)), ENCODER_INPUTS, adapter.cross_names,
                 (dynamic_axes({0: b, 1: s}), dynamic_axes({0: b, 1: s})), path)
    new = Dim("new_tokens", min=1, max=target)
    old = Dim("past_sequence", min=0, max=target - 1)
    kv = (rows, adapter.heads)
    example = (torch.ones(rows, 3, dtype=torch.long), torch.ones(rows, length, dtype=torch.long),
               *(torch.zeros(*kv, 4, adapter.head_dim) for _ in adapter.past_names),
               *(torch.zeros(*kv, length, adapter.head_dim) for _ in adapter.cross_names))
    dynamic = (dynamic_axes({0: b, 1: new}), dynamic_axes({0: b, 1: s}),  # forward(input_ids, mask, *kv): kv's axes as one tuple
               (*(dynamic_axes({0: b, 2: old}) for _ in adapter.past_names),
                *(dynamic_axes({0: b, 2: s}) for _ in adapter.cross_names)))
    export_step_graph(run_exporter, decoder_module(adapter), example,
                      ["input_ids", "encoder_attention_mask", *adapter.past_names, *adapter.cross_names],
                      ["logits", *adapter.present_names], dynamic, path.parent / DECODER_GRAPH, DECODER_GRAPH, adapter.assets)


def check_parity(adapter: TranslationAdapter, encoder_path: Path, tolerance, texts: list[str]) -> Comparison:
    """Tokens, greedy translations and per-step logits against MarianTokenizer and generate (module doc)."""
    from nimbuild.export.reference import open_session
    from nimbuild.serving.seq2seq import TranslationGraphs, greedy, greedy_settings
    from nimbuild.serving.translation_text import MarianText

    runtime = adapter.runtime_info
    text = MarianText(Path(adapter.tokenizer.name_or_path))
    rows = [_checked_tokens(adapter, text, t) for t in texts]
    graphs = TranslationGraphs(open_session(encoder_path), open_session(adapter.assets[DECODER_GRAPH]))
    budget = runtime["max_output_tokens"]
    comparison = Comparison(atol=tolerance.atol, rtol=tolerance.rtol, cosine_min=tolerance.cosine_min)
    problems, expected_all = [], []
    settings = greedy_settings(runtime)
    for source, row in zip(texts, rows):
        expected, expected_logits = _generate(adapter, row, budget)
        expected_all.append(expected)
        got_logits: list[np.ndarray] = []
        (got,) = greedy(graphs, [row], [budget], on_logits=lambda _, x: got_logits.append(x.copy()), **settings)
        steps = min(len(got_logits), len(expected_logits))
        comparison.add(f"1x{len(row)}", {"logits": np.stack(expected_logits[:steps])}, {"logits": np.stack(got_logits[:steps])})
        if got != expected:
            problems.append(first_difference(repr(source), expected, got))
        ours, theirs = text.decode(expected), adapter.tokenizer.decode(expected, skip_special_tokens=True)
        if ours != theirs:
            problems.append(f"  {source!r}: the runtime decodes the translation as {ours!r}, MarianTokenizer as {theirs!r}")
    for limit in range(0, len(rows), runtime["max_batch"]):  # the texts as padded batches, as the runtime batches
        chunk = slice(limit, limit + runtime["max_batch"])
        batched = greedy(graphs, rows[chunk], [budget] * len(rows[chunk]), **settings)
        for source, want, got in zip(texts[chunk], expected_all[chunk], batched):
            if got != want:
                problems.append(first_difference(f"{source!r} (batched)", want, got))
    if problems or not comparison.passed:
        raise ParityError("the exported graphs do not translate as transformers does:\n"
                          + "\n".join(problems + [comparison.describe()]))
    comparison.notes = {"greedy_tokens_compared": sum(len(e) for e in expected_all), "texts": len(texts),
                        "tokens": f"equal to MarianTokenizer on {len(texts)} texts and their translations"}
    return comparison


def _checked_tokens(adapter: TranslationAdapter, text, source: str) -> list[int]:
    ours, theirs = text.encode(source), adapter.tokenizer(source).input_ids
    if ours != list(theirs):
        raise ParityError(f"export.texts: the runtime tokenises {source!r} as {ours}, MarianTokenizer as {list(theirs)}")
    limit = adapter.runtime_info["max_source_tokens"]
    if len(ours) > limit:
        raise ExportError(f"export.texts: {source!r} is {len(ours)} tokens; the graph takes at most {limit} "
                          "(export.inputs.input_ids.sequence)")
    return ours


def _generate(adapter: TranslationAdapter, row: list[int], budget: int) -> tuple[list[int], list[np.ndarray]]:
    import torch

    config = greedy_reference(adapter.model.generation_config, budget)
    ids = torch.tensor([row])
    with torch.inference_mode():
        out = adapter.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                     output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[0, 1:].tolist()  # after the decoder start token
    return tokens, [step[0].float().numpy() for step in out.logits]


def export(checkpoint: HFCheckpoint, recipe: Recipe, dest: Path, reporter: Reporter) -> ReferenceExport:
    """A MarianMT-class encoder-decoder: the encoder graph, and the decoder's with its KV cache
    (nimbuild.export.translation)."""
    with reporter.step(f"load {checkpoint.model_type} checkpoint for {recipe.task}"):
        adapter = load_adapter(checkpoint, recipe)
    dest.mkdir(parents=True, exist_ok=True)
    onnx_path = dest / "model.onnx"
    export_encoder_decoder(adapter, recipe, checkpoint, export_graphs, onnx_path, DECODER_GRAPH, reporter)
    with reporter.step("check greedy translations against transformers"):
        comparison = check_parity(adapter, onnx_path, recipe.export.parity, recipe.export.texts)
    reporter.debug(comparison.describe())
    batch, source, _ = limits(recipe.export.inputs)
    specs = [InputSpec(name, {"batch": batch, "sequence": source}) for name in ENCODER_INPUTS]
    result = reference(onnx_path, specs, adapter, comparison)
    result.assets = adapter.assets
    return result


# Parity sources for a new recipe, by source language; others start from the English ones (parity
# needs the graphs to agree with transformers on some text, not good translations of it)
STARTER_TEXTS = {
    "en": ("call three four five", "nine thousand, nine hundred and ninety-nine", "stop",
           "the weather is nice today.", "where is the train station?"),
    "de": ("rufe drei vier fünf an", "neuntausend neunhundertneunundneunzig", "stopp",
           "das wetter ist heute schön.", "wo ist der bahnhof?"),
}


def starter(checkpoint: HFCheckpoint) -> Starter:
    """The tokenizer's language pair; sources of up to 128 tokens and translations of up to 256 (or
    the model's position limit)."""
    config = checkpoint.read_json("tokenizer_config.json") or {}
    source, target = config.get("source_lang"), config.get("target_lang")
    if not (source and target):
        raise ExportError(f"{checkpoint.path}/tokenizer_config.json names no source_lang and target_lang, so the "
                          "language pair cannot be read from the checkpoint; write serving.languages by hand")
    limit = positions(checkpoint, 256)
    longest, translation = min(limit, 128), min(limit, 256)
    return Starter(inputs={"input_ids": {"batch": [1, 4, 8], "sequence": [1, min(16, longest), longest]},
                           "decoder_input_ids": {"batch": [1, 4, 8], "sequence": [1, min(16, translation), translation]}},
                   inputs_note="input_ids: the source in tokens (with its end token); decoder_input_ids: the "
                               "translation's length, at most",
                   export={"texts": list(STARTER_TEXTS.get(str(source).split("-")[0].lower(), STARTER_TEXTS["en"]))},
                   serving={"languages": {"source": str(source), "target": str(target)}},
                   notes={"export.texts": "greedy translations through the graphs, token for token against "
                                          "transformers.generate; use sentences like those it will serve",
                          "serving.languages": "from the tokenizer's source_lang and target_lang"})
