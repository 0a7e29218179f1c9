"""CTC speech models from .nemo checkpoints: restore with nemo_toolkit, export with NeMo's own
exporter, and refuse the graph unless it matches NeMo's forward pass, as nimbuild measures it.

The served pipeline is front end (numpy, nimbuild.audio) -> this graph -> CTC greedy decoding, so
three things are checked, each against NeMo itself:
- the front end's features against NeMo's preprocessor, on real speech (the recipe's `export.audio`
  files) or, without them, seeded synthetic sound;
- the graph's log-probs against `model.forward(processed_signal=...)`, frame by frame over the valid
  frames of every row, in batches whose rows have different lengths (padding is where exported
  speech graphs usually go wrong; NeMo's own export check feeds one unpadded batch);
- the encoder lengths the runtime will compute (the graph returns log-probs only) against NeMo's.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nimbuild.errors import ExportError, ParityError, first_line
from nimbuild.export.parity import Comparison
from nimbuild.recipe import DimRange
from nimbuild.sources.nemo import CTC_CLASSES, NemoCheckpoint

PARITY_SEED = 20240611
AUDIO_INPUT, LENGTH_INPUT, OUTPUT = "audio_signal", "length", "logprobs"


@dataclass
class AsrAdapter:
    model: Any  # the restored NeMo model, in eval mode
    task: str = "asr-ctc"
    output_names: list[str] = field(default_factory=lambda: [OUTPUT])
    runtime_info: dict[str, Any] = field(default_factory=dict)
    assets: dict[str, Path] = field(default_factory=dict)  # workspace path -> file written here


@contextlib.contextmanager
def quiet():
    """NeMo and the TorchScript exporter print pages of warnings; keep them for -v only."""
    log = io.StringIO()
    nemo_logger = logging.getLogger("nemo_logger")
    level = nemo_logger.level
    nemo_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            warnings.simplefilter("ignore")
            yield log
    finally:
        nemo_logger.setLevel(level)


def restore(checkpoint: NemoCheckpoint) -> Any:
    """The NeMo model, restored from nimbuild's own (safe) unpacking of the archive."""
    if checkpoint.model_class not in CTC_CLASSES:
        raise ExportError(f"{checkpoint.source}: task asr-ctc takes {' or '.join(CTC_CLASSES)} checkpoints; "
                          f"this one is {checkpoint.model_class}")
    try:
        with quiet():  # importing NeMo prints telemetry and deprecation notices
            from nemo.collections.asr.models import ASRModel
            from nemo.core.connectors.save_restore_connector import SaveRestoreConnector
    except ImportError as e:
        raise ExportError(f"NeMo sources need nemo_toolkit: pip install 'nimbuild[nemo]' ({first_line(e)})") from None
    connector = SaveRestoreConnector()
    connector.model_extracted_dir = str(checkpoint.path)  # NeMo must not unpack the archive itself
    # the weights are unpickled with torch's weights_only loader; an override would allow code execution
    forced = os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        with quiet():
            model = ASRModel.restore_from(str(checkpoint.path), map_location="cpu", save_restore_connector=connector)
    except Exception as e:  # NeMo raises many types for a checkpoint it cannot restore
        raise ExportError(f"{checkpoint.source}: NeMo cannot restore the checkpoint: {first_line(e)}") from None
    finally:
        if forced is not None:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = forced
    model.eval()
    return model


def input_specs(recipe_inputs: dict, runtime: dict):
    """audio_signal [batch, features, frames] and, for graphs that take padding, length [batch],
    from the recipe's batch/frames ranges."""
    from nimbuild.export import InputSpec

    if list(recipe_inputs) != [AUDIO_INPUT]:
        raise ExportError(f"export.inputs: an asr-ctc model takes one input, {AUDIO_INPUT} (with batch and frames "
                          f"ranges; a frame is one feature hop), got {', '.join(recipe_inputs)}")
    dims = recipe_inputs[AUDIO_INPUT]
    if list(dims) != ["batch", "frames"]:
        raise ExportError(f"export.inputs.{AUDIO_INPUT}: expected the axes batch and frames, got {', '.join(dims)}")
    features = runtime["features"]["features"]
    fixed = DimRange(min=features, opt=features, max=features)
    audio = InputSpec(AUDIO_INPUT, {"batch": dims["batch"], "features": fixed, "frames": dims["frames"]}, "float32")
    return [audio, InputSpec(LENGTH_INPUT, {"batch": dims["batch"]}, "int64")] if runtime["padded_batches"] else [audio]


def load_adapter(checkpoint: NemoCheckpoint, recipe, assets_dir: Path) -> AsrAdapter:
    from nimbuild.audio import feature_config

    model = restore(checkpoint)
    featurizer = model.preprocessor.featurizer
    pre_config = dict(model.cfg.preprocessor)
    if int(getattr(featurizer, "frame_splicing", 1)) != 1:
        raise ExportError("the model's preprocessor splices frames (frame_splicing > 1); nimbuild's front end does not")
    if pre_config.get("normalize") not in ("per_feature", "all_features", None, "NA", "None"):
        raise ExportError(f"preprocessor.normalize {pre_config.get('normalize')!r} is not supported by the front end")
    features = feature_config(pre_config, featurizer)
    assets_dir.mkdir(parents=True, exist_ok=True)
    np.save(assets_dir / "filterbank.npy", featurizer.fb[0].detach().numpy().astype(np.float32), allow_pickle=False)
    tokens, kind = _vocabulary(model)
    (assets_dir / "vocabulary.json").write_text(json.dumps({"kind": kind, "tokens": tokens, "blank": len(tokens)},
                                                           ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    frames = recipe.export.inputs[AUDIO_INPUT]["frames"]
    hop_seconds = features["hop_length"] / features["sample_rate"]
    runtime = {
        "model_class": checkpoint.model_class,
        "sample_rate": features["sample_rate"],
        "features": features,
        "vocabulary": "asr/vocabulary.json",
        "subsampling": subsampling_layers(model.encoder),
        "max_frames": frames.max,
        "max_seconds": round(frames.max * hop_seconds, 3),
        "max_batch": recipe.export.inputs[AUDIO_INPUT]["batch"].max,
        "streaming": recipe.serving.streaming.model_dump(mode="json") if "str" in recipe.serving.modes else None,
    }
    assets = {"asr/filterbank.npy": assets_dir / "filterbank.npy", "asr/vocabulary.json": assets_dir / "vocabulary.json"}
    return AsrAdapter(model=model, runtime_info=runtime, assets=assets)


def _vocabulary(model) -> tuple[list[str], str]:
    """Token strings by id, and how they join into text; the CTC blank is the id after the last."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        size = int(tokenizer.vocab_size)
        tokens = [tokenizer.ids_to_tokens([i])[0] for i in range(size)]
        kind = "sentencepiece"
    else:
        tokens, kind = [str(t) for t in model.decoder.vocabulary], "characters"
    if model.decoder.num_classes_with_blank != len(tokens) + 1:
        raise ExportError(f"the decoder has {model.decoder.num_classes_with_blank} classes; expected "
                          f"{len(tokens)} tokens and the blank")
    return tokens, kind


def subsampling_layers(encoder) -> list[dict[str, Any]]:
    """The encoder's length arithmetic as (padding, kernel, stride, ceil) layers; checked against
    NeMo's own lengths during parity, so a layer missed here is a refused build, not a wrong one."""
    pre = getattr(encoder, "pre_encode", None)
    if pre is not None and hasattr(pre, "_sampling_num"):  # Conformer / FastConformer ConvSubsampling
        layer = {"padding": int(pre._left_padding + pre._right_padding), "kernel": int(pre._kernel_size),
                 "stride": int(pre._stride), "ceil": bool(pre._ceil_mode)}
        return [layer] * int(pre._sampling_num)
    if pre is not None:  # a Linear pre-encoder: no subsampling
        return []
    layers = []  # ConvASREncoder (QuartzNet, Citrinet): every masked convolution of every block, in order
    for block in getattr(encoder, "encoder", []):
        for conv in getattr(block, "mconv", []):
            inner = getattr(conv, "conv", None)
            if inner is None or not getattr(conv, "use_mask", True):
                continue
            layers.append({"padding": 2 * int(inner.padding[0]), "kernel": int(inner.dilation[0]) * (int(inner.kernel_size[0]) - 1) + 1,
                           "stride": int(inner.stride[0]), "ceil": False})
    return layers


def export_graph(adapter: AsrAdapter, path: Path, opset: int, metadata: dict[str, str], reporter) -> None:
    """NeMo's exporter (TorchScript-based, with NeMo's export-time module swaps), then our metadata."""
    import onnx

    with quiet() as log:
        try:
            adapter.model.export(str(path), onnx_opset_version=opset, check_trace=False, verbose=False)
        except Exception as e:
            reporter.debug(log.getvalue())
            raise ExportError(f"NeMo's ONNX export failed: {first_line(e)}") from None
    reporter.debug(log.getvalue())
    graph = onnx.load(str(path))
    names = ([i.name for i in graph.graph.input], [o.name for o in graph.graph.output])
    if names not in (([AUDIO_INPUT, LENGTH_INPUT], [OUTPUT]), ([AUDIO_INPUT], [OUTPUT])):
        raise ExportError(f"NeMo exported inputs {names[0]} and outputs {names[1]}; expected "
                          f"[{AUDIO_INPUT}, {LENGTH_INPUT}] -> [{OUTPUT}]")
    # NeMo exports convolutional encoders (QuartzNet, Citrinet) without their length masks: such a
    # graph is only right for unpadded input, so the runtime runs it one utterance at a time
    adapter.runtime_info["padded_batches"] = LENGTH_INPUT in names[0]
    graph.doc_string = ""
    del graph.metadata_props[:]
    for key, value in sorted(metadata.items()):
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))


def parity_lengths(spec, rng: np.random.Generator, padded: bool = True) -> list[tuple[int, list[int]]]:
    """(batch, row lengths): min, opt, the longest alone, and the largest batch of mixed lengths
    (of equal lengths, for a graph that cannot take padding)."""
    batch, frames = spec.dims["batch"], spec.dims["frames"]
    plans = [(batch.min, frames.min), (batch.opt, frames.opt), (batch.min, frames.max), (batch.max, frames.opt)]
    out = []
    for b, t in dict.fromkeys(plans):
        others = rng.integers(frames.min, t + 1, size=b - 1) if padded else [t] * (b - 1)
        out.append((b, [t] + [int(x) for x in others]))
    return out


def check_graph_parity(adapter: AsrAdapter, onnx_path: Path, specs, tolerance, audio: list[np.ndarray]) -> Comparison:
    import torch

    from nimbuild.audio import FrontEnd, encoded_lengths
    from nimbuild.export import open_session

    model, runtime = adapter.model, adapter.runtime_info
    comparison = Comparison(atol=tolerance.atol, rtol=tolerance.rtol, cosine_min=tolerance.cosine_min)
    front = FrontEnd(runtime["features"], model.preprocessor.featurizer.fb[0].detach().numpy())
    for i, clip in enumerate(audio):
        with torch.inference_mode():
            ref, ref_len = model.preprocessor(input_signal=torch.from_numpy(clip[None]), length=torch.tensor([len(clip)]))
        n = int(ref_len[0])
        if n != front.frames(len(clip)):
            raise ParityError(f"the front end makes {front.frames(len(clip))} frames of clip {i}; NeMo makes {n}")
        comparison.add(f"audio{i}:{n}", {"features": ref[0, :, :n].numpy()[None]}, {"features": front(clip)[:, :n][None]})
    session = open_session(onnx_path)
    rng = np.random.default_rng(PARITY_SEED)
    checked_lengths = 0
    padded = runtime["padded_batches"]
    for batch, lengths in parity_lengths(specs[0], rng, padded):
        feats = rng.standard_normal((batch, runtime["features"]["features"], max(lengths))).astype(np.float32)
        for row, n in enumerate(lengths):
            feats[row, :, n:] = 0.0
        lens = np.array(lengths, dtype=np.int64)
        with torch.inference_mode():
            ref, ref_len, _ = model.forward(processed_signal=torch.from_numpy(feats), processed_signal_length=torch.from_numpy(lens))
        ref, ref_len = ref.numpy(), ref_len.numpy()
        ours = encoded_lengths(lens, runtime["subsampling"])
        if not np.array_equal(ours, ref_len):
            raise ExportError(f"cannot derive this encoder's output lengths (frames {lengths} -> NeMo {ref_len.tolist()}, "
                              f"computed {ours.tolist()}); its subsampling is not one nimbuild knows")
        checked_lengths += len(lengths)
        (got,) = session.run([OUTPUT], {AUDIO_INPUT: feats, **({LENGTH_INPUT: lens} if padded else {})})
        for row, n in enumerate(ref_len):
            comparison.add(f"{batch}x{max(lengths)}[{row}]:{lengths[row]}", {OUTPUT: ref[row, :n][None]}, {OUTPUT: got[row, :n][None]})
    comparison.notes = {"audio_clips": len(audio), "lengths_checked": checked_lengths}
    if not comparison.passed:
        raise ParityError("the exported speech model does not match NeMo:\n" + comparison.describe())
    return comparison


def parity_audio(recipe, sample_rate: int) -> list[np.ndarray]:
    """The recipe's `export.audio` files (real speech), else seeded synthetic sound: voiced harmonics
    with a moving pitch, noise bursts and silence, so every part of the spectrum is exercised."""
    from nimbuild.audio import AudioError, read_audio

    clips = []
    for name in recipe.export.audio:
        path = recipe.resolve_path(name)
        try:
            clips.append(read_audio(path.read_bytes(), sample_rate))
        except (OSError, AudioError) as e:
            raise ExportError(f"export.audio: {path}: {e}") from None
    if clips:
        return clips
    rng = np.random.default_rng(PARITY_SEED)
    t = np.arange(int(1.5 * sample_rate)) / sample_rate
    pitch = 110 + 60 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12)) * (t < 0.8)
    noise = rng.standard_normal(len(t)) * 0.3 * ((t > 0.9) & (t < 1.2))
    return [(0.2 * (voiced + noise)).astype(np.float32), (0.05 * rng.standard_normal(sample_rate // 3)).astype(np.float32)]


def builder_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"exporter": "nemo_toolkit (torch.onnx)",
            **{name: version(name) for name in ("nemo_toolkit", "torch", "onnx", "onnxruntime")}}
