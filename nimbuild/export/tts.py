"""Text-to-speech models from .nemo checkpoints: a FastPitch spectrogram generator, restored with
nemo_toolkit, exported with NeMo's own exporter, and refused unless the graph matches NeMo.

The served pipeline is text -> sentences, normalised and tokenised (nimbuild.serving.tts_text) -> the
FastPitch graph (mel spectrogram, durations) -> the vocoder (the recipe's `source.vocoder`:
Griffin-Lim, nimbuild.serving.griffin_lim, over the model's own mel filterbank; or a NeMo HiFiGAN
checkpoint, exported with NeMo's exporter and carried as tts/vocoder.onnx) -> audio. So these are
checked, each against NeMo itself, on the recipe's `export.texts`:
- the runtime's tokens against NeMo's character parser (`model.parser`), text by text: equal;
- the frames each character lasts (the predicted durations as NeMo's length regulator rounds
  them) against NeMo's `forward` (what `generate_spectrogram` runs): equal, character for
  character, and so the number of frames;
- the graph's mel spectrogram against NeMo's over every frame, within the recipe's parity
  tolerance: each text alone, and as a batch of equal rows;
- a HiFiGAN vocoder's graph against NeMo's `convert_spectrogram_to_audio` on NeMo's mel
  spectrograms of those texts, sample by sample, within the same tolerance.

The runtime batches only sentences of equal length, and so does this check. FastPitch's
duration and pitch predictors convolve their LayerNorm's output, which is not zero at padded
positions, so NeMo's own padded batches change a sentence's durations with its batch-mates'
lengths (measured on the example: "stop" padded to 32 characters lasts 12.6 frames on its last
character, 11.5 alone). Served audio would then depend on which requests arrived together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nimbuild.errors import ExportError, ParityError, first_line
from nimbuild.export.asr import builder_versions, load_checked, nemo_export, restore
from nimbuild.export.parity import Comparison
from nimbuild.export.reference import ReferenceExport, Starter, check_graph, graph_metadata, reference
from nimbuild.recipe import Recipe
from nimbuild.sources.nemo import NemoCheckpoint
from nimbuild.util.progress import Reporter

INPUTS = ["text", "pitch", "pace"]  # NeMo's FastPitch export: tokens, a pitch shift and a pace per token
OUTPUTS = ["spect", "num_frames", "durs_predicted", "log_durs_predicted", "pitch_predicted"]
GRIFFIN_LIM_ITERATIONS = 32
VOCODER_GRAPH = "tts/vocoder.onnx"  # a neural vocoder's graph: spec [batch, mels, frames] -> audio


@dataclass
class TtsAdapter:
    model: Any  # the restored FastPitchModel, in eval mode
    vocoder: Any = None  # the restored HifiGanModel, when the recipe's vocoder is a checkpoint
    task: str = "tts"
    output_names: list[str] = field(default_factory=lambda: list(OUTPUTS))
    runtime_info: dict[str, Any] = field(default_factory=dict)
    assets: dict[str, Path] = field(default_factory=dict)


def input_specs(recipe_inputs: dict):
    """text, pitch and pace, each [batch, characters], from the recipe's ranges for `text`."""
    from nimbuild.export.reference import InputSpec

    if list(recipe_inputs) != ["text"]:
        raise ExportError(f"export.inputs: a spectrogram generator takes one input, text (with batch and characters "
                          f"ranges), got {', '.join(recipe_inputs)}")
    dims = recipe_inputs["text"]
    if list(dims) != ["batch", "characters"]:
        raise ExportError(f"export.inputs.text: expected the axes batch and characters, got {', '.join(dims)}")
    return [InputSpec(name, dict(dims), "int64" if name == "text" else "float32") for name in INPUTS]


def load_adapter(checkpoint: NemoCheckpoint, recipe, assets_dir: Path) -> TtsAdapter:
    from nimbuild.serving.tts_text import NORMALISATION

    model = restore(checkpoint, "tts")
    cfg = model.cfg
    if cfg.get("learn_alignment") or cfg.get("labels") is None:
        raise ExportError(f"{checkpoint.source}: this FastPitch reads text with a tokenizer "
                          f"({(cfg.get('text_tokenizer') or {}).get('_target_', 'learn_alignment')}); nimbuild serves "
                          "FastPitch models that read characters through NeMo's `labels` parser")
    if model.fastpitch.speaker_emb is not None:
        raise ExportError(f"{checkpoint.source}: multi-speaker FastPitch models are not served yet (n_speakers > 1)")
    pre = dict(cfg.preprocessor)
    if not pre.get("log", True) or pre.get("log_zero_guard_type", "add") != "add" or pre.get("mel_norm") not in (None, "slaney"):
        raise ExportError("the vocoder inverts a natural-log mel spectrogram with an added guard (preprocessor.log true, "
                          "log_zero_guard_type add); this model's preprocessor differs")
    featurizer = model.preprocessor.featurizer
    if float(featurizer.mag_power) != 1.0:
        raise ExportError(f"the vocoder inverts magnitude mel spectrograms (preprocessor.mag_power 1.0); this model's "
                          f"is {featurizer.mag_power}")
    assets_dir.mkdir(parents=True, exist_ok=True)
    np.save(assets_dir / "filterbank.npy", featurizer.fb[0].detach().numpy().astype(np.float32), allow_pickle=False)
    characters = recipe.export.inputs["text"]["characters"]
    labels = list(cfg.labels)
    runtime = {
        "model_class": checkpoint.model_class,
        "sample_rate": int(pre["sample_rate"]),
        "labels": labels,
        "text_normalization": NORMALISATION,
        "max_characters": characters.max,
        "max_batch": recipe.export.inputs["text"]["batch"].max,
        "mel": {"features": int(featurizer.nfilt), "n_fft": int(featurizer.n_fft), "hop_length": int(featurizer.hop_length),
                "win_length": int(featurizer.win_length), "log_guard": float(featurizer.log_zero_guard_value)},
        "voice": recipe.serving.voice.model_dump(mode="json"),
    }
    adapter = TtsAdapter(model=model, runtime_info=runtime, assets={"tts/filterbank.npy": assets_dir / "filterbank.npy"})
    if recipe.source.vocoder == "griffin-lim":
        runtime["vocoder"] = {"kind": "griffin-lim", "iterations": GRIFFIN_LIM_ITERATIONS, "filterbank": "tts/filterbank.npy"}
    else:
        adapter.vocoder = _load_vocoder(recipe, runtime)
        runtime["vocoder"] = {"kind": "hifigan", "model_class": "HifiGanModel", "graph": VOCODER_GRAPH}
    return adapter


def _load_vocoder(recipe, runtime: dict):
    """The recipe's vocoder checkpoint, refused unless it hears the mel spectrograms this model makes
    (the same bands, sample rate and hop)."""
    from nimbuild.sources.nemo import resolve_nemo

    checkpoint = resolve_nemo(recipe.source.vocoder.nemo, recipe.base_dir)
    vocoder = restore(checkpoint, "vocoder")
    pre = dict(vocoder.cfg.preprocessor)
    mel = runtime["mel"]
    theirs = {"mel bands": pre.get("nfilt", pre.get("features")), "sample rate": pre.get("sample_rate"),
              "hop": pre.get("n_window_stride")}
    ours = {"mel bands": mel["features"], "sample rate": runtime["sample_rate"], "hop": mel["hop_length"]}
    differ = [f"{k} {theirs[k]} (the spectrogram generator's: {ours[k]})" for k in ours if theirs[k] != ours[k]]
    if differ:
        raise ExportError(f"{checkpoint.source}: the vocoder does not hear this model's mel spectrograms: "
                          + ", ".join(differ))
    return vocoder


def export_graph(adapter: TtsAdapter, path: Path, opset: int, metadata: dict[str, str], reporter) -> None:
    """NeMo's exporter, then our metadata; a HiFiGAN vocoder's graph goes into the tts/ assets."""
    import onnx

    nemo_export(adapter.model, path, opset, reporter)
    graph = load_checked(path, [(INPUTS, OUTPUTS)], "spectrogram generator")
    for key, value in sorted(metadata.items()):
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))
    if adapter.vocoder is not None:
        target = path.parent / "nemo-vocoder" / "vocoder.onnx"
        nemo_export(adapter.vocoder, target, opset, reporter, " of the vocoder")
        dest = adapter.assets["tts/filterbank.npy"].with_name("vocoder.onnx")
        onnx.save(load_checked(target, [(["spec"], ["audio"])], "vocoder"), str(dest))
        adapter.assets[VOCODER_GRAPH] = dest


def check_parity(adapter: TtsAdapter, onnx_path: Path, specs, tolerance, texts: list[str]) -> Comparison:
    """Tokens, durations and mel spectrograms against NeMo on the recipe's texts (module doc):
    each text alone, and the first text as a full batch of equal rows (the batches the runtime runs)."""
    from nimbuild.export.reference import open_session

    runtime = adapter.runtime_info
    rows = [parity_tokens(adapter.model, text, runtime) for text in texts]
    batch, characters = specs[0].dims["batch"], specs[0].dims["characters"]
    for text, row in zip(texts, rows):
        if not characters.min <= len(row) <= characters.max:
            raise ExportError(f"export.texts: {text!r} is {len(row)} characters after normalisation; the graph takes "
                              f"{characters.min} to {characters.max} (export.inputs.text.characters)")
    session = open_session(onnx_path)
    comparison = Comparison(atol=tolerance.atol, rtol=tolerance.rtol, cosine_min=tolerance.cosine_min)
    references = [_nemo_reference(adapter.model, text, row) for text, row in zip(texts, rows)]
    runs = [([i], 1) for i in range(len(rows))] + [([0] * batch.max, batch.max)]
    for members, size in runs:
        spect, frames, durations = run_graph(session, [rows[i] for i in members])
        for k, i in enumerate(members):
            want_spect, want_frames = references[i]
            got_frames = token_frames(durations[k, :len(rows[i])])
            if not np.array_equal(got_frames, want_frames):
                first = int(np.flatnonzero(got_frames != want_frames)[0])
                raise ParityError(f"the exported graph's durations differ from NeMo's for {texts[i]!r} at character "
                                  f"{first} ({got_frames[first]} frames, NeMo {want_frames[first]}; batch of {size})")
            if int(frames[k]) != want_spect.shape[1]:
                raise ParityError(f"the exported graph makes {int(frames[k])} frames for {texts[i]!r}; NeMo makes "
                                  f"{want_spect.shape[1]}")
            comparison.add(f"{size}x{len(rows[i])}", {"spect": want_spect[None]},
                           {"spect": spect[k:k + 1, :, :want_spect.shape[1]]})
    if adapter.vocoder is not None:
        _check_vocoder(adapter, [spect for spect, _ in references], comparison)
    comparison.notes["durations"] = f"equal on {len(rows)} texts"
    comparison.notes["tokens"] = f"equal to NeMo's parser on {len(rows)} texts"
    if not comparison.passed:
        raise ParityError("the exported spectrogram generator does not match NeMo on export.texts:\n"
                          + comparison.describe())
    return comparison


def _check_vocoder(adapter: TtsAdapter, mels: list[np.ndarray], comparison: Comparison) -> None:
    """The vocoder's graph against NeMo's convert_spectrogram_to_audio, on NeMo's own mel
    spectrograms of the recipe's texts (what the served vocoder hears)."""
    import torch

    from nimbuild.export.reference import open_session

    session = open_session(adapter.assets[VOCODER_GRAPH])
    for mel in mels:
        with torch.inference_mode():
            want = adapter.vocoder.convert_spectrogram_to_audio(spec=torch.from_numpy(mel[None])).numpy()
        (got,) = session.run(["audio"], {"spec": mel[None].astype(np.float32)})
        comparison.add(f"vocoder 1x{mel.shape[1]}", {"audio": want.reshape(1, -1)}, {"audio": got.reshape(1, -1)})


def _nemo_reference(model, text: str, row: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """NeMo's mel spectrogram [mels, frames] and frames per character for one text, alone."""
    import torch

    try:
        with torch.inference_mode():
            out = model(text=torch.tensor([row]), durs=None, pitch=None, pace=1.0)
    except RuntimeError as e:  # e.g. an untrained model predicts too few frames for its decoder
        raise ExportError(f"NeMo's FastPitch fails on export.texts {text!r}: {first_line(e)}") from None
    return out[0][0].numpy(), token_frames(out[2][0].numpy())


def token_frames(durations: np.ndarray) -> np.ndarray:
    """The frames each character lasts: NeMo's length regulator rounds half up (pace 1)."""
    return np.floor(np.asarray(durations, dtype=np.float64) + 0.5).astype(np.int64)


def parity_tokens(model, text: str, runtime: dict) -> list[int]:
    """The runtime's tokens for `text`, refused unless NeMo's own parser gives the same."""
    from nimbuild.serving.tts_text import normalise, spell, tokens

    ours = tokens(normalise(text, set(runtime["labels"])), runtime["labels"])
    theirs = model.parser(text)
    if theirs is None or list(theirs) != ours:
        raise ParityError(f"export.texts: the runtime reads {text!r} as {spell(ours, runtime['labels'])!r}, NeMo's parser as "
                          f"{spell(theirs or [], runtime['labels'])!r}; use texts whose normalisation both agree on (words, "
                          "no digits)")
    return ours


def run_graph(session, rows: list[list[int]]):
    """(spect [B, mels, frames], num_frames [B], durations [B, characters]) for rows of one length."""
    text = np.asarray(rows, dtype=np.int64)
    feeds = {"text": text, "pitch": np.zeros(text.shape, np.float32), "pace": np.ones(text.shape, np.float32)}
    spect, frames, durations = session.run(["spect", "num_frames", "durs_predicted"], feeds)
    return spect, frames.reshape(-1), durations


def export(checkpoint, recipe: Recipe, dest: Path, reporter: Reporter) -> ReferenceExport:
    """A FastPitch spectrogram generator from a .nemo checkpoint (nimbuild.export.tts)."""
    dest.mkdir(parents=True, exist_ok=True)
    specs = input_specs(recipe.export.inputs)
    with reporter.step(f"restore {checkpoint.model_class} with NeMo"):
        adapter = load_adapter(checkpoint, recipe, dest / "tts")
    onnx_path = dest / "model.onnx"
    with reporter.step(f"export reference ONNX with NeMo (opset {recipe.export.opset})"):
        export_graph(adapter, onnx_path, recipe.export.opset, graph_metadata(recipe, checkpoint, adapter), reporter)
        check_graph(onnx_path, recipe.export.opset)
    with reporter.step("check tokens, durations and mel spectrograms against NeMo"):
        comparison = check_parity(adapter, onnx_path, specs, recipe.export.parity, recipe.export.texts)
    reporter.debug(comparison.describe())
    result = reference(onnx_path, specs, adapter, comparison)
    result.builder, result.assets = builder_versions(), adapter.assets
    return result


# Parity sentences for a new recipe: spoken text of everyday kinds (numbers, commands, punctuation)
STARTER_TEXTS = ("call five five one two", "stop", "dial nine oh one four four seven", "yes no up down left right",
                 "cancel, repeat!", "the quick brown fox jumps over the lazy dog.")


def starter(checkpoint: NemoCheckpoint) -> Starter:
    """Sentences of up to 256 characters; Griffin-Lim as the vocoder (no second checkpoint needed);
    parity sentences made only of characters the voice's alphabet has."""
    alphabet = {str(c).lower() for c in checkpoint.config.get("labels") or []}
    texts = [t for t in STARTER_TEXTS if not alphabet or set(t) <= alphabet] or [STARTER_TEXTS[1]]
    return Starter(inputs={"text": {"batch": [1, 4, 8], "characters": [1, 64, 256]}},
                   inputs_note="characters of one normalised sentence; the runtime splits longer text",
                   export={"texts": texts}, source={"vocoder": "griffin-lim"},
                   # mel spectrograms are log magnitudes: the examples' voices match NeMo to 1e-3
                   parity={"atol": 1.0e-3, "rtol": 1.0e-3, "cosine_min": 0.9999},
                   serving={"voice": {"name": "English-US", "subvoice": "Default", "language_code": "en-US"}},
                   notes={"export.texts": "checked against NeMo: tokens, durations and mel spectrograms",
                          "source.vocoder": "griffin-lim needs no weights; {nemo: vocoder.nemo} names a HiFiGAN",
                          "serving.voice": "the name and language Riva's clients ask for; set them to the voice's own"})
