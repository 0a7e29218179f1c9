"""Whisper (Hugging Face `WhisperForConditionalGeneration`) to two ONNX graphs, checked against
`transformers` generate on the same audio.

- model.onnx, the encoder: log-mel `input_features [B, mels, frames]` (one window, 30 s in OpenAI's) -> every
  decoder layer's cross-attention keys and values, projected once per clip; the profile's core
  (onnxruntime, a TensorRT-RTX engine, RMIR), as translation's encoder is.
- whisper/decoder.onnx: decoder steps with the self-attention cache, the cross keys and values as
  inputs; no source mask (every window is full length). On onnxruntime, driven by the same greedy
  loop as translation (nimbuild.serving.seq2seq), from Whisper's forced prompt
  (`<|startoftranscript|>`, the language, the task, `<|notimestamps|>`), under the rules of the
  checkpoint's generation config (its suppressed tokens, and those suppressed at the start).
- whisper/mel_filters.npy: the checkpoint's own mel filterbank, for the numpy front end
  (nimbuild.serving.whisper_audio), which must equal WhisperFeatureExtractor on the parity clips.

Parity is on what serving does: the front end's features against the feature extractor, then
greedy tokens through the graphs equal to `generate`'s for every clip, for each task the model has
(transcribe; translate), with the language given and detected, alone and as one batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nimbuild.errors import ExportError, ParityError
from nimbuild.export.asr import parity_audio
from nimbuild.export.llm import first_difference, flat_cache
from nimbuild.export.parity import Comparison
from nimbuild.export.reference import InputSpec, ReferenceExport, Starter, reference
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
from nimbuild.shapes import DimRange
from nimbuild.sources.hf import HFCheckpoint
from nimbuild.util.progress import Reporter

ENCODER_INPUT = "input_features"
DECODER_GRAPH = "whisper/decoder.onnx"
FILTERS = "whisper/mel_filters.npy"
SAMPLE_RATE = 16000  # what Whisper's feature extractors take
# Longer clips are cut into overlapping windows (nimbuild.serving.whisper_asr); eight minutes bounds one
# request's work, and fits a 16 kHz 16-bit WAV in the HTTP API's 16 MiB body
LONG_FORM_SECONDS = 480.0


@dataclass
class WhisperAdapter(EncoderDecoderNames):
    model: Any
    extractor: Any  # WhisperFeatureExtractor
    tokenizer: Any
    layers: int
    heads: int
    head_dim: int
    rules: DecodingRules
    tokenizer_file: Path  # the checkpoint's tokenizer.json, what the runtime decodes with
    task: str = "asr-whisper"
    runtime_info: dict[str, Any] = field(default_factory=dict)
    assets: dict[str, Path] = field(default_factory=dict)
    parity_clips: list[np.ndarray] = field(default_factory=list)  # the audio parity ran on, for precision gates

    def served_tokens(self, encoder: Path) -> dict[str, list[int]]:
        """Greedy tokens of each parity clip and case through `encoder` (this export's graph, or a
        precision variant of it) and the decoder graph: what a precision gate compares."""
        from nimbuild.export.reference import open_session
        from nimbuild.serving.seq2seq import TranslationGraphs
        from nimbuild.serving.whisper_asr import WhisperDecoder
        from nimbuild.serving.whisper_audio import batch_features

        decoder = WhisperDecoder(TranslationGraphs(open_session(encoder), open_session(self.assets[DECODER_GRAPH])),
                                 self.runtime_info)
        features = batch_features(self.parity_clips, np.load(self.assets[FILTERS]), self.runtime_info["features"])
        rows, budget = len(self.parity_clips), self.runtime_info["max_output_tokens"]
        out = {}
        for language, task in parity_cases(self.runtime_info["prompt"]):
            for i, (tokens, _) in enumerate(decoder.decode(features, [language] * rows, [task] * rows, [budget] * rows)):
                out[f"clip {i} ({task}, language {language or 'detected'})"] = tokens
        return out


def limits(recipe_inputs: dict) -> tuple[Any, int]:
    """The batch range (`input_features: {batch}`) and the most tokens a transcript may have
    (`decoder_input_ids`'s sequence max; 224 if not given)."""
    unknown = [n for n in recipe_inputs if n not in (ENCODER_INPUT, "decoder_input_ids")]
    if unknown or ENCODER_INPUT not in recipe_inputs or list(recipe_inputs[ENCODER_INPUT]) != ["batch"]:
        given = ", ".join(f"{n} {{{', '.join(d)}}}" for n, d in recipe_inputs.items())
        raise ExportError("export.inputs: a Whisper model takes input_features {batch} (each clip is one window of "
                          "the checkpoint's mel features, 30 s for OpenAI's) and optionally decoder_input_ids {batch, sequence} (the "
                          f"transcript's length in tokens); got {given}")
    batch = recipe_inputs[ENCODER_INPUT]["batch"]
    target = recipe_inputs.get("decoder_input_ids")
    return batch, (list(target.values())[-1].max if target else 224)


def _prompt_tokens(generation, where: str) -> dict:
    """Whisper's forced prompt pieces, from the generation config as transformers reads them."""
    start = getattr(generation, "decoder_start_token_id", None)
    no_timestamps = getattr(generation, "no_timestamps_token_id", None)
    if start is None or no_timestamps is None:
        raise ExportError(f"{where}: generation_config.json has no decoder_start_token_id or no_timestamps_token_id; "
                          "Whisper checkpoints carry both (openai/whisper-* do)")
    multilingual = bool(getattr(generation, "is_multilingual", False))
    languages = {k.strip("<|>"): int(v) for k, v in (getattr(generation, "lang_to_id", None) or {}).items()}
    tasks = {k: int(v) for k, v in (getattr(generation, "task_to_id", None) or {}).items()}
    if multilingual and not (languages and "transcribe" in tasks):
        raise ExportError(f"{where}: a multilingual Whisper's generation config needs lang_to_id and task_to_id")
    return {"start": int(start), "no_timestamps": int(no_timestamps), "multilingual": multilingual,
            "languages": languages if multilingual else {}, "tasks": tasks if multilingual else {}}


def load_adapter(checkpoint: HFCheckpoint, recipe) -> WhisperAdapter:
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    from nimbuild.export.adapters import _load

    where = str(checkpoint.path)
    model = _load("WhisperForConditionalGeneration", checkpoint)
    try:
        extractor = WhisperFeatureExtractor.from_pretrained(checkpoint.path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(checkpoint.path, local_files_only=True)
    except Exception as e:  # a checkpoint folder without its processor files
        raise ExportError(f"{where}: cannot load Whisper's feature extractor and tokenizer from the checkpoint folder: "
                          f"{str(e).splitlines()[0]}") from None
    if not (checkpoint.path / "tokenizer.json").is_file():
        raise ExportError(f"{where}: no tokenizer.json; the runtime decodes with it (save the tokenizer with "
                          "transformers to write one)")
    if extractor.sampling_rate != SAMPLE_RATE:
        raise ExportError(f"{where}: the feature extractor takes {extractor.sampling_rate} Hz; Whisper profiles take {SAMPLE_RATE}")
    config = model.config
    layers, heads = int(config.decoder_layers), int(config.decoder_attention_heads)
    generation = model.generation_config
    rules = decoding_rules(generation, where)
    batch, budget = limits(recipe.export.inputs)
    prompt = {**_prompt_tokens(generation, where), "special_ids": sorted(int(i) for i in tokenizer.all_special_ids)}
    longest_prompt = 4 if prompt["multilingual"] else 2
    if budget + longest_prompt > int(config.max_target_positions):
        raise ExportError(f"export.inputs.decoder_input_ids: {budget} tokens and the {longest_prompt}-token prompt exceed "
                          f"the decoder's {config.max_target_positions} positions")
    frames = int(extractor.nb_max_frames)
    if frames != 2 * int(config.max_source_positions):
        raise ExportError(f"{where}: the feature extractor makes {frames} frames a window, the encoder takes "
                          f"{2 * int(config.max_source_positions)}")
    adapter = WhisperAdapter(model=model, extractor=extractor, tokenizer=tokenizer, layers=layers, heads=heads,
                             head_dim=int(config.d_model) // heads, rules=rules,
                             tokenizer_file=checkpoint.path / "tokenizer.json")
    adapter.runtime_info = {
        "model_class": type(model).__name__, "sample_rate": SAMPLE_RATE,
        "max_seconds": LONG_FORM_SECONDS, "max_batch": batch.max, "max_output_tokens": budget,
        "features": {"n_fft": int(extractor.n_fft), "hop_length": int(extractor.hop_length), "mels": int(config.num_mel_bins),
                     "frames": frames, "window_samples": int(extractor.n_samples), "filters": FILTERS},
        "prompt": prompt, "generation": rules.record(), "decoder": DECODER_GRAPH,
        # a stream is re-decoded whole as it grows (runtime_min/tasks/whisper/model.py): one window at most
        "streaming": recipe.serving.streaming.model_dump(mode="json") if "str" in recipe.serving.modes else None,
        "max_stream_seconds": extractor.n_samples / SAMPLE_RATE,
        "pad_token_id": int(generation.pad_token_id if generation.pad_token_id is not None else rules.eos[0]),
        "kv_cache": {"layers": layers, "heads": heads, "head_dim": adapter.head_dim},
    }
    return adapter


def encoder_module(adapter: WhisperAdapter):
    import torch

    model = adapter.model

    class EncoderWithCross(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_features):
            hidden = self.model.model.encoder(input_features=input_features).last_hidden_state
            return cross_keys_values(self.model.model.decoder.layers, hidden)

    return EncoderWithCross()


def decoder_module(adapter: WhisperAdapter):
    import torch

    model, layers = adapter.model, adapter.layers

    class DecoderWithPast(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, *kv):
            cache, states = step_cache(kv[:2 * layers], kv[2 * layers:], layers)
            out = self.model.model.decoder(input_ids=input_ids, encoder_hidden_states=states, past_key_values=cache,
                                           use_cache=True)
            logits = self.model.proj_out(out.last_hidden_state[:, -1:, :])
            return (logits, *flat_cache(out.past_key_values.self_attention_cache))

    return DecoderWithPast()


def export_graphs(adapter: WhisperAdapter, recipe, path: Path, run) -> None:
    import torch

    batch, budget = limits(recipe.export.inputs)
    features = adapter.runtime_info["features"]
    Dim = torch.export.Dim
    b = Dim("batch", min=batch.min, max=batch.max) if batch.max > batch.min else None
    rows = 2 if b else batch.min
    example = torch.zeros(rows, features["mels"], features["frames"])
    run(encoder_module(adapter), (example,), [ENCODER_INPUT], adapter.cross_names, ({0: b} if b else {},), path)
    new = Dim("new_tokens", min=1, max=budget + 4)
    old = Dim("past_sequence", min=0, max=budget + 3)
    source = features["frames"] // 2
    kv = (rows, adapter.heads)
    step = (torch.ones(rows, 4, dtype=torch.long),
            *(torch.zeros(*kv, 3, adapter.head_dim) for _ in adapter.past_names),
            *(torch.zeros(*kv, source, adapter.head_dim) for _ in adapter.cross_names))
    dynamic = (dynamic_axes({0: b, 1: new}), (*(dynamic_axes({0: b, 2: old}) for _ in adapter.past_names),
                                              *(dynamic_axes({0: b}) for _ in adapter.cross_names)))
    export_step_graph(run, decoder_module(adapter), step, ["input_ids", *adapter.past_names, *adapter.cross_names],
                      ["logits", *adapter.present_names], dynamic, path.parent / DECODER_GRAPH, DECODER_GRAPH, adapter.assets)
    filters = path.parent / FILTERS
    np.save(filters, np.asarray(adapter.extractor.mel_filters, np.float32))
    adapter.assets[FILTERS] = filters


def parity_cases(prompt: dict) -> list[tuple[str | None, str]]:
    """(language, task) pairs parity and the precision gates decode: the language detected, and for a
    multilingual model given too, and translated where the model translates."""
    cases = [(None, "transcribe")]
    if prompt["multilingual"]:
        first = next(iter(prompt["languages"]))
        cases += [(first, "transcribe")] + ([(first, "translate")] if "translate" in prompt["tasks"] else [])
    return cases


def check_parity(adapter: WhisperAdapter, encoder_path: Path, tolerance, clips: list[np.ndarray]) -> Comparison:
    """Features against the feature extractor; greedy tokens against generate (module doc)."""
    from tokenizers import Tokenizer

    from nimbuild.export.reference import open_session
    from nimbuild.serving.seq2seq import TranslationGraphs
    from nimbuild.serving.whisper_asr import WhisperDecoder, WhisperSpeech
    from nimbuild.serving.whisper_audio import batch_features

    runtime = adapter.runtime_info
    filters = np.load(adapter.assets[FILTERS])
    comparison = Comparison(atol=tolerance.atol, rtol=tolerance.rtol, cosine_min=tolerance.cosine_min)
    ours = batch_features(clips, filters, runtime["features"])
    theirs = adapter.extractor([c for c in clips], sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
    comparison.add(f"features x{len(clips)}", {"input_features": theirs}, {"input_features": ours})
    decoder = WhisperDecoder(TranslationGraphs(open_session(encoder_path), open_session(adapter.assets[DECODER_GRAPH])),
                             runtime)
    budget = runtime["max_output_tokens"]
    prompt = runtime["prompt"]
    cases = parity_cases(prompt)
    problems, compared = [], 0
    text = Tokenizer.from_file(str(adapter.tokenizer_file))
    for language, task in cases:
        expected = [_generate(adapter, theirs[i:i + 1], language, task, budget) for i in range(len(clips))]
        for i, tokens in enumerate(expected):  # the runtime decodes with tokenizers alone
            ours_text = text.decode(tokens, skip_special_tokens=True)
            theirs_text = adapter.tokenizer.decode(tokens, skip_special_tokens=True)
            if ours_text != theirs_text:
                problems.append(f"  clip {i}: the runtime decodes {ours_text!r}, WhisperTokenizer {theirs_text!r}")
        for size in (1, min(len(clips), runtime["max_batch"])):
            for start in range(0, len(clips), size):
                rows = range(start, min(start + size, len(clips)))
                got = decoder.decode(ours[rows.start:rows.stop], [language] * len(rows), [task] * len(rows), [budget] * len(rows))
                for i, (tokens, _) in zip(rows, got):
                    compared += len(expected[i])
                    if tokens != expected[i]:
                        problems.append(first_difference(f"clip {i} ({task}, language {language or 'detected'}, "
                                                         f"batch of {len(rows)})", expected[i], tokens))
    long_cases = check_long_form(adapter, WhisperSpeech(decoder.graphs, runtime, encoder_path.parent, adapter.tokenizer_file),
                                 clips, [language for language, task in cases if task == "transcribe"], problems)
    if problems or not comparison.passed:
        raise ParityError("the exported graphs do not transcribe as transformers does:\n"
                          + "\n".join(problems[:8] + [comparison.describe()]))
    comparison.notes = {"greedy_tokens_compared": compared, "audio_clips": len(clips),
                        "text": "decoded by tokenizers equal to WhisperTokenizer's",
                        "cases": [f"{task}/{language or 'detected'}" for language, task in cases],
                        "long_form": long_cases}
    return comparison


def check_long_form(adapter: WhisperAdapter, speech, clips: list[np.ndarray], languages: list[str | None],
                    problems: list[str]) -> list[str]:
    """A clip of over two windows (the parity clips end to end, repeated) transcribed as transformers'
    pipeline transcribes it with `chunk_length_s` one window: its text equal to the pipeline's."""
    from transformers import pipeline

    from nimbuild.export.seq2seq import greedy_reference

    window = adapter.extractor.n_samples
    joined = np.concatenate(clips)
    audio = np.tile(joined, int(np.ceil(2.5 * window / len(joined))))
    pipe = pipeline("automatic-speech-recognition", model=adapter.model, tokenizer=adapter.tokenizer,
                    feature_extractor=adapter.extractor, chunk_length_s=window / SAMPLE_RATE, device="cpu")
    config = greedy_reference(adapter.model.generation_config, adapter.runtime_info["max_output_tokens"])
    checked = []
    for language in languages:
        extra = {"language": language, "task": "transcribe"} if adapter.runtime_info["prompt"]["multilingual"] else {}
        theirs = pipe(audio.copy(), generate_kwargs={"generation_config": config, **extra})["text"].strip()
        ours = speech.transcribe([audio], [language], ["transcribe"])[0][0]
        if ours != theirs:
            problems.append(f"  a {len(audio) / SAMPLE_RATE:.0f} s clip (language {language or 'detected'}): the runtime "
                            f"writes {ours[:60]!r}..., the pipeline {theirs[:60]!r}...")
        checked.append(f"{len(audio) / SAMPLE_RATE:.0f}s/{language or 'detected'}")
    return checked


def _generate(adapter: WhisperAdapter, features: np.ndarray, language: str | None, task: str, budget: int) -> list[int]:
    import torch

    config = greedy_reference(adapter.model.generation_config, budget)
    kwargs = {"language": language, "task": task} if adapter.runtime_info["prompt"]["multilingual"] else {}
    with torch.inference_mode():
        out = adapter.model.generate(torch.from_numpy(features), generation_config=config, **kwargs)
    return out[0].tolist()


def export(checkpoint: HFCheckpoint, recipe: Recipe, dest: Path, reporter: Reporter) -> ReferenceExport:
    """A Whisper encoder-decoder: the encoder graph and the decoder's with its cache (nimbuild.export.whisper)."""
    with reporter.step(f"load {checkpoint.model_type} checkpoint for {recipe.task}"):
        adapter = load_adapter(checkpoint, recipe)
    dest.mkdir(parents=True, exist_ok=True)
    onnx_path = dest / "model.onnx"
    export_encoder_decoder(adapter, recipe, checkpoint, export_graphs, onnx_path, DECODER_GRAPH, reporter)
    adapter.parity_clips = parity_audio(recipe, SAMPLE_RATE)
    with reporter.step("check features and greedy transcripts against transformers"):
        comparison = check_parity(adapter, onnx_path, recipe.export.parity, adapter.parity_clips)
    reporter.debug(comparison.describe())
    batch, _ = limits(recipe.export.inputs)
    features = adapter.runtime_info["features"]
    fixed = {"mels": features["mels"], "frames": features["frames"]}
    specs = [InputSpec(ENCODER_INPUT, {"batch": batch, **{k: DimRange(min=v, opt=v, max=v) for k, v in fixed.items()}},
                       "float32")]
    result = reference(onnx_path, specs, adapter, comparison)
    result.assets = adapter.assets
    return result


def starter(checkpoint: HFCheckpoint) -> Starter:
    """Batches of up to 8 clips of one window (the feature extractor's chunk: 30 s for OpenAI's
    checkpoints); transcripts of up to 224 tokens (or what the decoder's positions leave after the
    prompt); served offline and streaming, as a Speech NIM is."""
    positions = int(checkpoint.config.get("max_target_positions") or 448)
    window = int((checkpoint.read_json("preprocessor_config.json") or {}).get("chunk_length") or 30)
    longest = min(224, positions - 4)
    return Starter(inputs={ENCODER_INPUT: {"batch": [1, 4, 8]},
                           "decoder_input_ids": {"batch": [1, 4, 8], "sequence": [1, min(32, longest), longest]}},
                   inputs_note=f"input_features: clips, each one {window} s window of log-mel features (the feature "
                               "extractor's chunk); decoder_input_ids: the transcript's length in tokens, at most",
                   serving={"modes": ["ofl", "str"], "streaming": {"chunk_ms": 1000}},
                   notes={"export.audio": "add recordings (relative to this file) to check transcripts on real "
                                          "speech; without them parity runs on seeded synthetic sound",
                          "serving.streaming": f"str: a stream is re-decoded whole after each chunk (a partial "
                                               f"transcript per chunk_ms, one {window} s window at most); its final "
                                               "transcript is the offline one"})
