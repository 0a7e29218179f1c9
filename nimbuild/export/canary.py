"""Canary (NeMo's multitask encoder-decoder, `EncDecMultiTaskModel`) to two ONNX graphs, checked
against NeMo's own `transcribe()` on the same audio.

NeMo's exporter has no path for this model (its decoder caches each layer's input and re-projects
keys and values over them every step), so nimbuild exports it with torch.onnx from NeMo's own modules:
- model.onnx, the encoder: NeMo's features `audio_signal [B, features, frames]` and `length [B]` ->
  `encoded_lengths [B]` and every decoder layer's cross-attention keys and values (the FastConformer,
  the encoder-decoder projection, the optional transformer encoder, then each layer's key and value
  projections, once per clip); the profile's core (onnxruntime, a TensorRT-RTX engine, RMIR);
- canary/decoder.onnx: a decoder step with a self-attention key/value cache (what NeMo's cache of layer
  inputs computes, projected once), the encoder's padding mask and the cross keys and values as inputs,
  the next token's logits out; on onnxruntime, driven by the loop of nimbuild.serving.seq2seq;
- canary/filterbank.npy and canary/vocabulary.json: NeMo's mel filterbank for the numpy front end
  (nimbuild.serving.audio), and the aggregate tokenizer's pieces for the text.

Parity is on what serving does (nimbuild.serving.canary_asr): the front end's features against NeMo's
preprocessor; the runtime's prompts against NeMo's prompt formatter for every language pair the
model has; then, for each clip, transcription (and translation into English and out of it where
the model has it) through the graphs equal, token for token, to `transcribe()` with greedy decoding, alone and as
one padded batch, and the text equal to NeMo's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nimbuild.errors import ExportError, ParityError
from nimbuild.export.asr import AUDIO_INPUT, LENGTH_INPUT, input_specs, parity_audio, quiet, restore, subsampling_layers
from nimbuild.export.llm import first_difference
from nimbuild.export.parity import Comparison
from nimbuild.export.reference import ReferenceExport, Starter, reference
from nimbuild.export.seq2seq import EncoderDecoderNames, dynamic_axes, export_encoder_decoder, export_step_graph
from nimbuild.recipe import Recipe
from nimbuild.serving.canary_asr import CanarySpeech, prompt_ids
from nimbuild.sources.nemo import NemoCheckpoint
from nimbuild.util.progress import Reporter

ENCODED_LENGTHS = "encoded_lengths"
DECODER_GRAPH = "canary/decoder.onnx"
PAD_MIN_SECONDS = 1.0  # transcribe() pads shorter clips to this with silence (its pad_min_duration default)
NEG_INF = -10000.0  # NeMo's attention masks add this, not -inf (nemo.collections.common.parts.transformer_utils)
# The prompt formats nimbuild fills in (NeMo's CanaryPromptFormatter and Canary2PromptFormatter, at
# their defaults: no decoder context, emotion undefined, no ITN, timestamps or diarization)
TEMPLATES = {
    "canary": ["<|startoftranscript|>", "{source}", "{task}", "{target}", "{pnc}"],
    "canary2": ["<|startofcontext|>", "<|startoftranscript|>", "<|emo:undefined|>", "{source}", "{target}", "{pnc}",
                "<|noitn|>", "<|notimestamp|>", "<|nodiarize|>"],
}


@dataclass
class CanaryAdapter(EncoderDecoderNames):
    model: Any  # the restored EncDecMultiTaskModel, in eval mode
    layers: int
    heads: int
    head_dim: int
    task: str = "asr-canary"
    runtime_info: dict[str, Any] = field(default_factory=dict)
    assets: dict[str, Path] = field(default_factory=dict)
    parity_clips: list[np.ndarray] = field(default_factory=list)  # the audio parity ran on, for precision gates

    def speech(self, encoder: Path) -> CanarySpeech:
        """The runtime's decoding over `encoder` (this export's graph, or a precision variant) and the decoder graph."""
        from nimbuild.export.reference import open_session
        from nimbuild.serving.seq2seq import TranslationGraphs

        return CanarySpeech(TranslationGraphs(open_session(encoder), open_session(self.assets[DECODER_GRAPH])),
                            self.runtime_info, self.assets["canary/filterbank.npy"].parent.parent)

    def served_tokens(self, encoder: Path) -> dict[str, list[int]]:
        """Greedy tokens of each parity clip and language pair through `encoder`: what a precision gate compares."""
        speech, out = self.speech(encoder), {}
        for source, target in parity_cases(self.runtime_info["prompt"]):
            prompt = prompt_ids(self.runtime_info["prompt"], source, target)
            for i, tokens in enumerate(speech.decode(self.parity_clips, [prompt] * len(self.parity_clips))):
                out[f"clip {i} ({source}->{target})"] = tokens
        return out

    @property
    def output_names(self) -> list[str]:
        return [ENCODED_LENGTHS, *self.cross_names]


def _refuse_unsupported(model, where: str) -> None:
    """What the graphs or the loop do not reproduce, refused by name."""
    from nemo.collections.common.tokenizers.canary_tokenizer import CanaryTokenizer

    if model.prompt_format not in TEMPLATES:
        raise ExportError(f"{where}: prompt_format {model.prompt_format!r}: nimbuild fills in {', '.join(TEMPLATES)}")
    if not isinstance(model.tokenizer, CanaryTokenizer):
        raise ExportError(f"{where}: the tokenizer is {type(model.tokenizer).__name__}; nimbuild decodes Canary's "
                          "aggregate tokenizer (tokenizer.type: agg)")
    if any(not layer.pre_ln for layer in model.transf_decoder.decoder.layers):
        raise ExportError(f"{where}: the transformer decoder is post-LayerNorm (pre_ln: false); nimbuild exports Canary's pre-LN decoder")
    decoding = model.cfg.get("decoding") or {}
    beam = int((decoding.get("beam") or {}).get("beam_size", 1) or 1)
    if decoding.get("strategy", "beam") == "beam" and beam > 1:
        raise ExportError(f"{where}: the checkpoint decodes with a beam of {beam}; nimbuild serves greedy decoding "
                          "(set decoding.beam.beam_size: 1, or strategy: greedy, and save it again)")
    if decoding.get("strategy") in ("greedy", "greedy_batch") and (decoding.get("greedy") or {}).get("temperature") is not None:
        raise ExportError(f"{where}: the checkpoint samples at a temperature; nimbuild serves greedy decoding")


def _generation_delta(model) -> int:
    """max_generation_delta of the strategy the checkpoint decodes with (-1: up to the decoder's positions)."""
    decoding = model.cfg.get("decoding") or {}
    strategy = "greedy" if decoding.get("strategy", "beam") in ("greedy", "greedy_batch") else "beam"
    return int((decoding.get(strategy) or {}).get("max_generation_delta", -1))


def prompt_record(model, where: str) -> dict[str, Any]:
    """The template, the special tokens' ids and the languages and tasks, for the runtime's prompts."""
    tokenizer = model.tokenizer
    specials = {name: int(i) for name, i in tokenizer.special_tokens.items()}
    template = TEMPLATES[model.prompt_format]
    needed = [t for t in template if not t.startswith("{")] + ["<|pnc|>", "<|nopnc|>", "<|endoftext|>"]
    missing = [t for t in needed + (["<|transcribe|>"] if "{task}" in template else []) if t not in specials]
    if missing:
        raise ExportError(f"{where}: the tokenizer's special tokens lack {', '.join(missing)}, which the "
                          f"{model.prompt_format} prompt needs")
    languages = {lang: specials[f"<|{lang}|>"] for lang in tokenizer.langs if f"<|{lang}|>" in specials}
    if not languages:
        raise ExportError(f"{where}: no language of the tokenizer ({', '.join(tokenizer.langs)}) has a <|code|> token")
    translates = "en" in languages and len(languages) > 1 and ("{task}" not in template or "<|translate|>" in specials)
    return {"format": model.prompt_format, "template": template, "specials": specials, "languages": languages,
            "tasks": ["transcribe", "translate"] if translates else ["transcribe"], "multilingual": True,
            "detects": False, "default_language": "en" if "en" in languages else next(iter(languages)),
            "eos": int(tokenizer.eos_id), "pad": int(tokenizer.pad_id)}


def load_adapter(checkpoint: NemoCheckpoint, recipe, assets_dir: Path) -> CanaryAdapter:
    from nimbuild.serving.audio import feature_config

    where = str(checkpoint.source)
    model = restore(checkpoint, "asr-canary")
    _refuse_unsupported(model, where)
    featurizer = model.preprocessor.featurizer
    pre_config = dict(model.cfg.preprocessor)
    if int(getattr(featurizer, "frame_splicing", 1)) != 1:
        raise ExportError("the model's preprocessor splices frames (frame_splicing > 1); nimbuild's front end does not")
    features = {**feature_config(pre_config, featurizer), "filterbank": "canary/filterbank.npy"}
    assets_dir.mkdir(parents=True, exist_ok=True)
    np.save(assets_dir / "filterbank.npy", featurizer.fb[0].detach().numpy().astype(np.float32), allow_pickle=False)
    (assets_dir / "vocabulary.json").write_text(json.dumps({"pieces": list(model.tokenizer.vocabulary)}, ensure_ascii=False,
                                                           indent=1) + "\n", encoding="utf-8")
    layers = model.transf_decoder.decoder.layers
    attention = layers[0].first_sub_layer
    adapter = CanaryAdapter(model=model, layers=len(layers), heads=int(attention.num_attention_heads),
                            head_dim=int(attention.attn_head_size))
    frames = recipe.export.inputs[AUDIO_INPUT]["frames"]
    hop_seconds = features["hop_length"] / features["sample_rate"]
    max_seconds = round(frames.max * hop_seconds, 3)
    adapter.runtime_info = {
        "model_class": checkpoint.model_class, "kind": "canary", "sample_rate": features["sample_rate"],
        "features": features, "vocabulary": "canary/vocabulary.json", "decoder": DECODER_GRAPH,
        "max_frames": frames.max, "max_seconds": max_seconds, "max_batch": recipe.export.inputs[AUDIO_INPUT]["batch"].max,
        "padded_batches": True, "prompt": prompt_record(model, where), "subsampling": subsampling_layers(model.encoder),
        "max_sequence_length": int(model.transf_decoder.max_sequence_length),
        "max_generation_delta": _generation_delta(model),
        "pad_min_samples": int(PAD_MIN_SECONDS * features["sample_rate"]),
        # a stream is re-decoded whole as it grows (runtime_min/tasks/whisper/model.py): one utterance at most
        "streaming": recipe.serving.streaming.model_dump(mode="json") if "str" in recipe.serving.modes else None,
        "max_stream_seconds": max_seconds,
        "kv_cache": {"layers": adapter.layers, "heads": adapter.heads, "head_dim": adapter.head_dim},
    }
    adapter.assets = {"canary/filterbank.npy": assets_dir / "filterbank.npy",
                      "canary/vocabulary.json": assets_dir / "vocabulary.json"}
    return adapter


def encoder_module(adapter: CanaryAdapter):
    """features -> encoded lengths and each decoder layer's cross keys (pre-scaled, as NeMo's
    attention scales them) and values, as NeMo's forward() computes the encoder states."""
    import torch
    from nemo.collections.asr.models.aed_multitask_models import lens_to_mask

    model = adapter.model

    class EncoderWithCross(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, audio_signal, length):
            encoded, lengths = self.model.encoder(audio_signal=audio_signal, length=length)
            states = self.model.encoder_decoder_proj(encoded.transpose(1, 2))
            if self.model.use_transf_encoder:
                mask = lens_to_mask(lengths, states.shape[1]).to(states.dtype)
                states = self.model.transf_encoder(encoder_states=states, encoder_mask=mask)
            out = []
            for layer in self.model.transf_decoder.decoder.layers:
                attention = layer.second_sub_layer
                out += [attention.transpose_for_scores(attention.key_net(states)) / attention.attn_scale,
                        attention.transpose_for_scores(attention.value_net(states))]
            return (lengths, *out)

    return EncoderWithCross()


def _attend(attention, query, keys, values, mask):
    """NeMo's MultiHeadAttention on projected keys and values (keys pre-scaled): its arithmetic, in its order."""
    import torch

    q = attention.transpose_for_scores(attention.query_net(query)) / attention.attn_scale
    scores = torch.matmul(q, keys.transpose(-1, -2)) + mask
    context = torch.matmul(torch.softmax(scores, dim=-1), values).permute(0, 2, 1, 3)
    return attention.out_projection(context.reshape(*context.shape[:2], -1))


def decoder_module(adapter: CanaryAdapter):
    """One decoder step of NeMo's pre-LN TransformerDecoder, with self keys and values cached."""
    import torch

    model, count = adapter.model, adapter.layers

    class DecoderStep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = model.transf_decoder.embedding
            self.decoder = model.transf_decoder.decoder
            self.head = model.log_softmax.mlp

        def forward(self, input_ids, encoder_attention_mask, *kv):
            past, cross = kv[:2 * count], kv[2 * count:]
            old, new = past[0].shape[2], input_ids.shape[1]
            x = self.embedding(input_ids, start_pos=old)
            # a new token sees every cached one and the new ones up to itself (NeMo's diagonal-0 mask)
            allowed = torch.ones(new, old + new, dtype=torch.bool, device=x.device).tril(old)
            self_mask = (~allowed).to(x.dtype) * NEG_INF
            cross_mask = (1.0 - encoder_attention_mask.to(x.dtype))[:, None, None, :] * NEG_INF
            present = []
            for i, layer in enumerate(self.decoder.layers):
                attention = layer.first_sub_layer
                normed = layer.layer_norm_1(x)
                key = torch.cat([past[2 * i], attention.transpose_for_scores(attention.key_net(normed)) / attention.attn_scale], 2)
                value = torch.cat([past[2 * i + 1], attention.transpose_for_scores(attention.value_net(normed))], 2)
                present += [key, value]
                x = x + _attend(attention, normed, key, value, self_mask)
                x = x + _attend(layer.second_sub_layer, layer.layer_norm_2(x), cross[2 * i], cross[2 * i + 1], cross_mask)
                x = x + layer.third_sub_layer(layer.layer_norm_3(x))
            if self.decoder.final_layer_norm is not None:
                x = self.decoder.final_layer_norm(x)
            return (self.head(x[:, -1:, :]), *present)

    return DecoderStep()


def export_graphs(adapter: CanaryAdapter, recipe, path: Path, run) -> None:
    import torch

    dims = recipe.export.inputs[AUDIO_INPUT]
    batch, frames = dims["batch"], dims["frames"]
    features = adapter.runtime_info["features"]["features"]
    Dim = torch.export.Dim
    b = Dim("batch", min=batch.min, max=batch.max) if batch.max > batch.min else None
    rows = 2 if b else batch.min
    t = Dim("frames", min=max(frames.min, 16), max=max(frames.max, 17))
    example = (torch.randn(rows, features, max(frames.opt, 32)), torch.full((rows,), max(frames.opt, 32), dtype=torch.long))
    with quiet():
        run(encoder_module(adapter), example, [AUDIO_INPUT, LENGTH_INPUT], adapter.output_names,
            (dynamic_axes({0: b, 2: t}), dynamic_axes({0: b})), path)
    longest = adapter.runtime_info["max_sequence_length"]
    new = Dim("new_tokens", min=1, max=longest)
    old = Dim("past_sequence", min=0, max=longest)
    source = Dim("encoded", min=2, max=max(frames.max, 17))
    kv = (rows, adapter.heads)
    step = (torch.ones(rows, 4, dtype=torch.long), torch.ones(rows, 5, dtype=torch.long),
            *(torch.zeros(*kv, 3, adapter.head_dim) for _ in adapter.past_names),
            *(torch.zeros(*kv, 5, adapter.head_dim) for _ in adapter.cross_names))
    dynamic = (dynamic_axes({0: b, 1: new}), dynamic_axes({0: b, 1: source}),
               (*(dynamic_axes({0: b, 2: old}) for _ in adapter.past_names),
                *(dynamic_axes({0: b, 2: source}) for _ in adapter.cross_names)))
    with quiet():
        export_step_graph(run, decoder_module(adapter), step,
                          ["input_ids", "encoder_attention_mask", *adapter.past_names, *adapter.cross_names],
                          ["logits", *adapter.present_names], dynamic, path.parent / DECODER_GRAPH, DECODER_GRAPH,
                          adapter.assets)


def _turns(model, source: str, target: str, pnc: bool) -> list[dict]:
    """The user turn NeMo's prompt formatter fills in, with the slots its format has."""
    slots = {"source_lang": source, "target_lang": target, "pnc": "yes" if pnc else "no",
             model.prompt.PROMPT_LANGUAGE_SLOT: "spl_tokens"}
    if model.prompt_format == "canary":
        slots["task"] = "asr" if source == target else "ast"
    else:  # canary2's slots at the defaults NeMo's data pipeline gives them
        slots.update(decodercontext="", emotion="<|emo:undefined|>", itn="no", timestamp="no", diarize="no")
    return [{"role": "user", "slots": slots}]


def _nemo_transcribe(model, clip: np.ndarray, source: str, target: str) -> tuple[list[int], str]:
    """NeMo's own greedy transcript of one clip (a batch of one, so its budget counts this clip's
    frames), through `transcribe()` itself: it pads clips shorter than a second, which serving must too."""
    (turn,) = _turns(model, source, target, True)
    slots = {k: v for k, v in turn["slots"].items() if k != model.prompt.PROMPT_LANGUAGE_SLOT}
    with quiet():
        (hypothesis,) = model.transcribe([clip], batch_size=1, return_hypotheses=True, verbose=False, num_workers=0,
                                         **slots)
    return [int(t) for t in hypothesis.y_sequence], hypothesis.text


def _greedy_decoding(model) -> None:
    """NeMo's greedy search with the checkpoint's own generation delta (what the runtime serves)."""
    from omegaconf import OmegaConf

    with quiet():
        model.change_decoding_strategy(OmegaConf.create({"strategy": "greedy", "greedy": {
            "max_generation_delta": _generation_delta(model)}}))


def check_prompts(model, prompt: dict) -> int:
    """Every language pair's prompt as the runtime fills it in equal to NeMo's prompt formatter's."""
    pairs = [(s, t) for s in prompt["languages"] for t in prompt["languages"]
             if s == t or ("en" in (s, t) and "translate" in prompt["tasks"])]
    for source, target in pairs:
        for pnc in (True, False):
            with quiet():
                theirs = model.prompt.encode_dialog(turns=_turns(model, source, target, pnc))["context_ids"].tolist()
            ours = prompt_ids(prompt, source, target, pnc)
            if ours != theirs:
                raise ParityError(f"the {source}->{target} prompt (pnc {pnc}) is {ours}; NeMo's prompt formatter makes {theirs}")
    return 2 * len(pairs)


def parity_cases(prompt: dict) -> list[tuple[str, str]]:
    """(spoken, written) language pairs parity and the precision gates decode: the default language
    transcribed, and where the model translates, into English and out of it."""
    source = prompt["default_language"]
    cases = [(source, source)]
    if "translate" in prompt["tasks"]:
        other = next(s for s in prompt["languages"] if s != "en")
        cases += [(other, "en"), ("en", other)]
    return cases


def check_parity(adapter: CanaryAdapter, encoder_path: Path, tolerance, clips: list[np.ndarray]) -> Comparison:
    """Features, prompts, greedy tokens and text against NeMo (module doc)."""
    import torch

    model, runtime = adapter.model, adapter.runtime_info
    comparison = Comparison(atol=tolerance.atol, rtol=tolerance.rtol, cosine_min=tolerance.cosine_min)
    speech = adapter.speech(encoder_path)
    for i, clip in enumerate(clips):
        with torch.inference_mode():
            ref, ref_len = model.preprocessor(input_signal=torch.from_numpy(clip[None]), length=torch.tensor([len(clip)]))
        n = int(ref_len[0])
        ours = speech.front(clip)
        if ours.shape[1] != ref.shape[2] or speech.front.frames(len(clip)) != n:
            raise ParityError(f"the front end makes {speech.front.frames(len(clip))} of {ours.shape[1]} frames of clip {i}; "
                              f"NeMo makes {n} of {ref.shape[2]}")
        comparison.add(f"features{i}:{n}", {"features": ref[0, :, :n].numpy()[None]}, {"features": ours[None, :, :n]})
        if len(clip) >= runtime["pad_min_samples"]:  # the encoder frames NeMo's budget counts, as the runtime derives
            with torch.inference_mode():  # them (shorter clips are padded first, as transcribe() pads them)
                frames = model.forward(processed_signal=ref, processed_signal_length=ref_len)[2].shape[1]
            ours = int(speech.encode([clip])[2][0])
            if ours != frames:
                raise ParityError(f"clip {i}: the runtime counts {ours} encoder frames for NeMo's budget, NeMo {frames}")
    prompts_checked = check_prompts(model, runtime["prompt"])
    _greedy_decoding(model)
    cases = parity_cases(runtime["prompt"])
    problems, compared = [], 0
    for source, target in cases:
        expected = [_nemo_transcribe(model, clip, source, target) for clip in clips]
        prompt = prompt_ids(runtime["prompt"], source, target)
        for size in (1, min(len(clips), runtime["max_batch"])):
            for start in range(0, len(clips), size):
                rows = range(start, min(start + size, len(clips)))
                got = speech.decode([clips[i] for i in rows], [prompt] * len(rows))
                for i, tokens in zip(rows, got):
                    compared += len(expected[i][0])
                    if tokens != expected[i][0]:
                        problems.append(first_difference(f"clip {i} ({source}->{target}, batch of {len(rows)})",
                                                         expected[i][0], tokens).replace("transformers", "NeMo"))
                    elif speech.text(tokens) != expected[i][1].strip():
                        problems.append(f"  clip {i}: the runtime's text {speech.text(tokens)!r}, NeMo's {expected[i][1]!r}")
    if problems or not comparison.passed:
        raise ParityError("the exported graphs do not transcribe as NeMo does:\n" + "\n".join(problems[:8] + [comparison.describe()]))
    comparison.notes = {"greedy_tokens_compared": compared, "audio_clips": len(clips), "prompts_checked": prompts_checked,
                        "cases": [f"{s}->{t}" for s, t in cases], "text": "equal to NeMo's hypotheses, stripped"}
    return comparison


def builder_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"exporter": "torch.onnx (dynamo) over NeMo's modules",
            **{name: version(name) for name in ("nemo_toolkit", "torch", "onnx", "onnxruntime")}}


def export(checkpoint: NemoCheckpoint, recipe: Recipe, dest: Path, reporter: Reporter) -> ReferenceExport:
    """A Canary encoder-decoder: the encoder graph and the decoder's with its cache (nimbuild.export.canary)."""
    dest.mkdir(parents=True, exist_ok=True)
    with reporter.step(f"restore {checkpoint.model_class} with NeMo"):
        adapter = load_adapter(checkpoint, recipe, dest / "canary")
    onnx_path = dest / "model.onnx"
    export_encoder_decoder(adapter, recipe, checkpoint, export_graphs, onnx_path, DECODER_GRAPH, reporter)
    adapter.parity_clips = parity_audio(recipe, adapter.runtime_info["sample_rate"])
    with reporter.step("check features, prompts and greedy transcripts against NeMo"):
        comparison = check_parity(adapter, onnx_path, recipe.export.parity, adapter.parity_clips)
    reporter.debug(comparison.describe())
    result = reference(onnx_path, input_specs(recipe.export.inputs, adapter.runtime_info), adapter, comparison)
    result.builder, result.assets = builder_versions(), adapter.assets
    return result


def starter(checkpoint: NemoCheckpoint) -> Starter:
    """Utterances of up to 40 s (Canary's training clips), in feature hops of the checkpoint's window
    stride; served offline and streaming (a stream re-decoded whole as it grows), as a Speech NIM is."""
    stride = float((checkpoint.config.get("preprocessor") or {}).get("window_stride") or 0.01)
    frames = round(40 / stride)
    return Starter(inputs={AUDIO_INPUT: {"batch": [1, 4, 8], "frames": [16, min(1000, frames), frames]}},
                   inputs_note=f"frames are feature hops ({stride * 1000:g} ms, the checkpoint's window stride): "
                               "up to 40 s of audio per utterance",
                   serving={"modes": ["ofl", "str"], "streaming": {"chunk_ms": 1000}},
                   notes={"export.audio": "add recordings (relative to this file) to check transcripts on real "
                                          "speech; without them parity runs on seeded synthetic sound",
                          "serving.streaming": "str: a stream is re-decoded whole after each chunk (a partial "
                                               "transcript per chunk_ms, one utterance's length at most); its "
                                               "final transcript is the offline one"})
