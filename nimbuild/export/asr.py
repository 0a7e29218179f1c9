"""Speech models from .nemo checkpoints (CTC, and RNNT/TDT transducers): restore with nemo_toolkit,
export with NeMo's own exporter, and refuse the graphs unless they match NeMo, as nimbuild measures it.

The served pipeline is front end (numpy, nimbuild.serving.audio) -> the acoustic graph -> greedy decoding
(CTC over its log-probs; for a transducer, nimbuild.serving.transducer over NeMo's decoder-joint graph), so
these things are checked, each against NeMo itself:
- the front end's features against NeMo's preprocessor, on real speech (the recipe's `export.audio`
  files) or, without them, seeded synthetic sound;
- the graph's log-probs against `model.forward(processed_signal=...)`, frame by frame over the valid
  frames of every row, in batches whose rows have different lengths (padding is where exported
  speech graphs usually go wrong; NeMo's own export check feeds one unpadded batch);
- the encoder lengths the runtime will compute (the graph returns log-probs only) against NeMo's;
- for a transducer, the decoded tokens (and the frame of each) against NeMo's own greedy search, on
  padded batches of the recipe's speech and of the parity features: equal, not close.

A transducer profile's core graph (model.onnx, what engines are built from) is the encoder; the
decoder-joint graph travels as an asset (asr/decoder_joint.onnx) and runs on onnxruntime: it is a
one-frame, one-label step over a batch of a few rows, whose cost is the call, not the arithmetic.
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
from nimbuild.export.reference import ReferenceExport, Starter, check_graph, graph_metadata, reference
from nimbuild.recipe import Recipe
from nimbuild.shapes import DimRange
from nimbuild.sources.nemo import MODEL_CLASSES, VOCODER_CLASSES, NemoCheckpoint
from nimbuild.util.progress import Reporter

PARITY_SEED = 20240611
AUDIO_INPUT, LENGTH_INPUT, OUTPUT = "audio_signal", "length", "logprobs"
ENCODED, ENCODED_LENGTHS = "outputs", "encoded_lengths"  # NeMo's names for a transducer encoder's outputs
DECODER_JOINT = "asr/decoder_joint.onnx"
DECODER_JOINT_IO = (["encoder_outputs", "targets", "target_length", "input_states_1", "input_states_2"],
                    ["outputs", "prednet_lengths", "output_states_1", "output_states_2"])


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


def restore(checkpoint: NemoCheckpoint, task: str = "asr-ctc") -> Any:
    """The NeMo model, restored from nimbuild's own (safe) unpacking of the archive."""
    classes = VOCODER_CLASSES if task == "vocoder" else MODEL_CLASSES[task]
    if checkpoint.model_class not in classes:
        other = next((t for t, c in MODEL_CLASSES.items() if checkpoint.model_class in c), None)
        hint = f" (build it with task: {other})" if other else ""
        takes = "source.vocoder takes" if task == "vocoder" else f"task {task} takes"
        raise ExportError(f"{checkpoint.source}: {takes} {' or '.join(classes)} checkpoints; "
                          f"this one is {checkpoint.model_class}{hint}")
    try:
        with quiet():  # importing NeMo prints telemetry and deprecation notices
            if task == "tts":
                from nemo.collections.tts.models import FastPitchModel as Base
            elif task == "vocoder":
                from nemo.collections.tts.models import HifiGanModel as Base
            else:
                from nemo.collections.asr.models import ASRModel as Base
            from nemo.core.connectors.save_restore_connector import SaveRestoreConnector
    except ImportError as e:
        raise ExportError(f"NeMo sources need nemo_toolkit: pip install 'nimbuild[nemo]' ({first_line(e)})") from None
    connector = SaveRestoreConnector()
    connector.model_extracted_dir = str(checkpoint.path)  # NeMo must not unpack the archive itself
    # the weights are unpickled with torch's weights_only loader; an override would allow code execution
    forced = os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        with quiet():
            model = Base.restore_from(str(checkpoint.path), map_location="cpu", save_restore_connector=connector)
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
    from nimbuild.export.reference import InputSpec

    if list(recipe_inputs) != [AUDIO_INPUT]:
        raise ExportError(f"export.inputs: a speech model takes one input, {AUDIO_INPUT} (with batch and frames "
                          f"ranges; a frame is one feature hop), got {', '.join(recipe_inputs)}")
    dims = recipe_inputs[AUDIO_INPUT]
    if list(dims) != ["batch", "frames"]:
        raise ExportError(f"export.inputs.{AUDIO_INPUT}: expected the axes batch and frames, got {', '.join(dims)}")
    features = runtime["features"]["features"]
    fixed = DimRange(min=features, opt=features, max=features)
    audio = InputSpec(AUDIO_INPUT, {"batch": dims["batch"], "features": fixed, "frames": dims["frames"]}, "float32")
    return [audio, InputSpec(LENGTH_INPUT, {"batch": dims["batch"]}, "int64")] if runtime["padded_batches"] else [audio]


def load_adapter(checkpoint: NemoCheckpoint, recipe, assets_dir: Path) -> AsrAdapter:
    from nimbuild.serving.audio import feature_config

    model = restore(checkpoint, recipe.task)
    transducer = recipe.task == "asr-rnnt"
    if not transducer and hasattr(model, "ctc_decoder"):  # a hybrid built as its CTC head: NeMo exports that head
        with quiet():
            model.change_decoding_strategy(decoder_type="ctc", verbose=False)
    featurizer = model.preprocessor.featurizer
    pre_config = dict(model.cfg.preprocessor)
    if int(getattr(featurizer, "frame_splicing", 1)) != 1:
        raise ExportError("the model's preprocessor splices frames (frame_splicing > 1); nimbuild's front end does not")
    if pre_config.get("normalize") not in ("per_feature", "all_features", None, "NA", "None"):
        raise ExportError(f"preprocessor.normalize {pre_config.get('normalize')!r} is not supported by the front end")
    features = feature_config(pre_config, featurizer)
    assets_dir.mkdir(parents=True, exist_ok=True)
    np.save(assets_dir / "filterbank.npy", featurizer.fb[0].detach().numpy().astype(np.float32), allow_pickle=False)
    tokens, kind = _vocabulary(model, transducer)
    (assets_dir / "vocabulary.json").write_text(json.dumps({"kind": kind, "tokens": tokens, "blank": len(tokens)},
                                                           ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    frames = recipe.export.inputs[AUDIO_INPUT]["frames"]
    hop_seconds = features["hop_length"] / features["sample_rate"]
    runtime = {
        "model_class": checkpoint.model_class,
        **({"head": "transducer" if transducer else "ctc"} if hasattr(model, "ctc_decoder") else {}),
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
    if not transducer:
        return AsrAdapter(model=model, runtime_info=runtime, assets=assets)
    runtime["decoder"] = transducer_info(model, len(tokens))
    return AsrAdapter(model=model, task="asr-rnnt", output_names=[ENCODED], runtime_info=runtime, assets=assets)


def transducer_info(model, vocabulary: int) -> dict[str, Any]:
    """What the runtime's greedy search needs, read from NeMo's own instantiated greedy decoder, so
    the search is the one NeMo's transcribe() runs: the blank id, TDT's durations, the symbols
    allowed per frame, and the prediction network's state shapes."""
    greedy = getattr(getattr(model, "decoding", None), "decoding", None)
    strategy = str((model.cfg.get("decoding") or {}).get("strategy", "greedy_batch"))
    if greedy is None or not strategy.startswith("greedy"):
        raise ExportError(f"the model's decoding strategy is {strategy}; the runtime decodes greedily, so nimbuild "
                          "builds transducers whose configured decoding is greedy or greedy_batch")
    decoder = model.decoder
    prediction = getattr(decoder, "prediction", None)
    rnn = prediction["dec_rnn"] if prediction is not None and "dec_rnn" in prediction else None
    if type(decoder).__name__ != "RNNTDecoder" or type(rnn).__name__ not in ("LSTM", "LSTMDropout"):
        raise ExportError(f"the prediction network is {type(decoder).__name__}; nimbuild decodes transducers whose "
                          "prediction network is NeMo's LSTM RNNTDecoder")
    durations = [int(d) for d in (getattr(greedy, "durations", None) or [])]
    max_symbols = getattr(greedy, "max_symbols", None)
    layers, hidden = int(decoder.pred_rnn_layers), int(decoder.pred_hidden)
    return {"kind": "tdt" if durations else "rnnt", "graph": DECODER_JOINT, "blank": vocabulary,
            "durations": durations, "max_symbols": int(max_symbols) if max_symbols else None,
            "states": [[layers, hidden], [layers, hidden]]}


def _vocabulary(model, transducer: bool = False) -> tuple[list[str], str]:
    """Token strings by id, and how they join into text; the blank is the id after the last."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        size = int(tokenizer.vocab_size)
        tokens = [tokenizer.ids_to_tokens([i])[0] for i in range(size)]
        kind = "sentencepiece"
    else:
        tokens, kind = [str(t) for t in (model.joint if transducer else ctc_head(model)).vocabulary], "characters"
    # a transducer's blank is its prediction network's padding id (the joint's outputs add TDT's durations)
    classes = model.decoder.blank_idx + 1 if transducer else ctc_head(model).num_classes_with_blank
    if classes != len(tokens) + 1:
        raise ExportError(f"the decoder has {classes} classes; expected "
                          f"{len(tokens)} tokens and the blank")
    return tokens, kind


def ctc_head(model):
    """The CTC decoder: a CTC model's own, or the one a hybrid carries beside its transducer."""
    return getattr(model, "ctc_decoder", None) or model.decoder


def _acoustic_reference(model, feats, lens, transducer: bool):
    """NeMo's encoder output (a transducer) or CTC log-probs, and the encoded lengths, for features."""
    if transducer or not hasattr(model, "ctc_decoder"):
        return model.forward(processed_signal=feats, processed_signal_length=lens)[:2]
    encoded, lengths = model.encoder(audio_signal=feats, length=lens)  # a hybrid's forward stops at the encoder
    return model.ctc_decoder(encoder_output=encoded), lengths


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
    """NeMo's exporter (TorchScript-based, with NeMo's export-time module swaps), then our metadata.
    A transducer exports as two files (encoder-*, decoder_joint-*): the encoder becomes `path`, the
    decoder-joint an asset beside the vocabulary."""
    import onnx

    transducer = adapter.task == "asr-rnnt"
    target = path.parent / "nemo-export" / path.name if transducer else path
    nemo_export(adapter.model, target, opset, reporter)
    if transducer:
        expected = [([AUDIO_INPUT, LENGTH_INPUT], [ENCODED, ENCODED_LENGTHS])]
        joint = load_checked(target.with_name("decoder_joint-" + target.name), [DECODER_JOINT_IO], "decoder-joint")
        dest = adapter.assets["asr/vocabulary.json"].with_name(Path(DECODER_JOINT).name)
        onnx.save(joint, str(dest))
        adapter.assets[DECODER_JOINT] = dest
        graph = load_checked(target.with_name("encoder-" + target.name), expected, "encoder")
    else:
        expected = [([AUDIO_INPUT, LENGTH_INPUT], [OUTPUT]), ([AUDIO_INPUT], [OUTPUT])]
        graph = load_checked(path, expected, "acoustic model")
    # NeMo exports convolutional encoders (QuartzNet, Citrinet) without their length masks: such a
    # graph is only right for unpadded input, so the runtime runs it one utterance at a time
    adapter.runtime_info["padded_batches"] = LENGTH_INPUT in [i.name for i in graph.graph.input]
    for key, value in sorted(metadata.items()):
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))


def nemo_export(model, target: Path, opset: int, reporter, what: str = "") -> None:
    """NeMo's own exporter (`Exportable.export`: TorchScript-based, with NeMo's export-time module
    swaps), its chatter kept for -v."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with quiet() as log:
        try:
            model.export(str(target), onnx_opset_version=opset, check_trace=False, verbose=False)
        except Exception as e:
            reporter.debug(log.getvalue())
            raise ExportError(f"NeMo's ONNX export{what} failed: {first_line(e)}") from None
    reporter.debug(log.getvalue())


def load_checked(path: Path, expected: list[tuple[list[str], list[str]]], what: str):
    """An exported graph whose input and output names are one of the expected sets, its doc string
    and metadata dropped (NeMo's carry nothing the runtime reads)."""
    import onnx

    graph = onnx.load(str(path))
    names = ([i.name for i in graph.graph.input], [o.name for o in graph.graph.output])
    if names not in expected:
        raise ExportError(f"NeMo exported the {what} with inputs {names[0]} and outputs {names[1]}; expected "
                          + " or ".join(f"{i} -> {o}" for i, o in expected))
    graph.doc_string = ""
    del graph.metadata_props[:]
    return graph


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

    from nimbuild.export.reference import open_session
    from nimbuild.serving.audio import FrontEnd, encoded_lengths

    model, runtime = adapter.model, adapter.runtime_info
    out = adapter.output_names[0]
    transducer = adapter.task == "asr-rnnt"
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
    searches = []  # (what, NeMo's encoder output and lengths, the graph's): transducer searches to compare
    for batch, lengths in parity_lengths(specs[0], rng, padded):
        feats = rng.standard_normal((batch, runtime["features"]["features"], max(lengths))).astype(np.float32)
        for row, n in enumerate(lengths):
            feats[row, :, n:] = 0.0
        lens = np.array(lengths, dtype=np.int64)
        with torch.inference_mode():
            ref, ref_len = _acoustic_reference(model, torch.from_numpy(feats), torch.from_numpy(lens), transducer)
        ref, ref_len = ref.numpy(), ref_len.numpy()
        ours = encoded_lengths(lens, runtime["subsampling"])
        if not np.array_equal(ours, ref_len):
            raise ExportError(f"cannot derive this encoder's output lengths (frames {lengths} -> NeMo {ref_len.tolist()}, "
                              f"computed {ours.tolist()}); its subsampling is not one nimbuild knows")
        checked_lengths += len(lengths)
        (got,) = session.run([out], {AUDIO_INPUT: feats, **({LENGTH_INPUT: lens} if padded else {})})
        for row, n in enumerate(ref_len):
            want, have = (ref[row, :, :n].T, got[row, :, :n].T) if transducer else (ref[row, :n], got[row, :n])
            comparison.add(f"{batch}x{max(lengths)}[{row}]:{lengths[row]}", {out: want[None]}, {out: have[None]})
        searches.append((f"features {batch}x{max(lengths)}", ref, ref_len, got))
    comparison.notes = {"audio_clips": len(audio), "lengths_checked": checked_lengths}
    if not comparison.passed:
        raise ParityError("the exported speech model does not match NeMo:\n" + comparison.describe())
    if transducer:
        searches.append(_speech_batch(model, front, session, audio, runtime))
        comparison.notes["transcripts_checked"] = check_search_parity(model, runtime, adapter.assets[DECODER_JOINT], searches)
    return comparison


def _speech_batch(model, front, session, audio: list[np.ndarray], runtime: dict):
    """The recipe's speech as one padded batch: NeMo's preprocessor and encoder, and nimbuild's front
    end and the exported encoder, as each pipeline serves it."""
    import torch

    from nimbuild.serving.audio import encoded_lengths

    signal = np.zeros((len(audio), max(len(a) for a in audio)), dtype=np.float32)
    for row, clip in enumerate(audio):
        signal[row, :len(clip)] = clip
    with torch.inference_mode():
        feats, feat_len = model.preprocessor(input_signal=torch.from_numpy(signal), length=torch.tensor([len(a) for a in audio]))
        ref, ref_len = model.encoder(audio_signal=feats, length=feat_len)
    ours = [front(clip) for clip in audio]
    lengths = np.array([f.shape[-1] for f in ours], dtype=np.int64)
    batch = np.zeros((len(ours), ours[0].shape[0], int(lengths.max())), dtype=np.float32)
    for row, f in enumerate(ours):
        batch[row, :, :f.shape[-1]] = f
    feeds = {AUDIO_INPUT: batch, **({LENGTH_INPUT: lengths} if runtime["padded_batches"] else {})}
    (got,) = session.run([ENCODED], feeds)
    if not np.array_equal(encoded_lengths(lengths, runtime["subsampling"]), ref_len.numpy()):
        raise ParityError("the front end's frame counts differ from NeMo's on the recipe's speech")
    return f"speech x{len(audio)}", ref.numpy(), ref_len.numpy(), got


def check_search_parity(model, runtime: dict, decoder_joint: Path, searches) -> int:
    """nimbuild.serving.transducer over the exported graphs must emit NeMo's tokens on NeMo's frames, row for
    row of every padded batch; the first difference refuses the build. Returns the rows checked."""
    import torch

    from nimbuild.export.reference import open_session
    from nimbuild.serving.audio import Vocabulary
    from nimbuild.serving.transducer import TransducerDecoder

    spec = runtime["decoder"]
    search = TransducerDecoder(open_session(decoder_joint), spec["blank"], spec["durations"], spec["max_symbols"],
                               [tuple(s) for s in spec["states"]])
    vocabulary = Vocabulary(*_vocabulary(model, transducer=True))
    rows = 0
    for what, ref, ref_len, got in searches:
        with torch.inference_mode():
            hyps = model.decoding.rnnt_decoder_predictions_tensor(encoder_output=torch.from_numpy(ref),
                                                                  encoded_lengths=torch.from_numpy(ref_len),
                                                                  return_hypotheses=True)
        hyps = hyps[0] if isinstance(hyps, tuple) else hyps
        ours = [search.start() for _ in hyps]
        search.decode(ours, [got[row, :, :n].T for row, n in enumerate(ref_len)], [0] * len(ours))
        for row, (theirs, mine) in enumerate(zip(hyps, ours)):
            tokens = [int(t) for t in theirs.y_sequence]
            frames = [int(t) for t in _as_list(theirs.timestamp)]
            if tokens != mine.tokens or (frames and frames != mine.frames):
                at = next((k for k, (a, b) in enumerate(zip(tokens + [-1], mine.tokens + [-1])) if a != b), len(tokens))
                raise ParityError(f"the transducer search differs from NeMo's greedy decoding ({what}, row {row}): "
                                  f"NeMo {vocabulary.text(tokens)!r} ({len(tokens)} tokens), nimbuild "
                                  f"{vocabulary.text(mine.tokens)!r} ({len(mine.tokens)}); first difference at token {at}"
                                  + (" (tokens equal, frames differ)" if tokens == mine.tokens else ""))
            rows += 1
    return rows


def _as_list(value) -> list:
    if value is None:
        return []
    return value.tolist() if hasattr(value, "tolist") else list(value)


def parity_audio(recipe, sample_rate: int) -> list[np.ndarray]:
    """The recipe's `export.audio` files (real speech), else seeded synthetic sound: voiced harmonics
    with a moving pitch, noise bursts and silence, so every part of the spectrum is exercised."""
    from nimbuild.serving.audio import AudioError, read_audio

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


def export(checkpoint, recipe: Recipe, dest: Path, reporter: Reporter) -> ReferenceExport:
    """A CTC speech model from a .nemo checkpoint (nimbuild.export.asr)."""
    dest.mkdir(parents=True, exist_ok=True)
    with reporter.step(f"restore {checkpoint.model_class} with NeMo"):
        adapter = load_adapter(checkpoint, recipe, dest / "asr")
    onnx_path = dest / "model.onnx"
    with reporter.step(f"export reference ONNX with NeMo (opset {recipe.export.opset})"):
        export_graph(adapter, onnx_path, recipe.export.opset, graph_metadata(recipe, checkpoint, adapter), reporter)
        check_graph(onnx_path, recipe.export.opset)
    specs = input_specs(recipe.export.inputs, adapter.runtime_info)
    audio = parity_audio(recipe, adapter.runtime_info["sample_rate"])
    with reporter.step("check front end and graph against NeMo"):
        comparison = check_graph_parity(adapter, onnx_path, specs, recipe.export.parity, audio)
    reporter.debug(comparison.describe())
    result = reference(onnx_path, specs, adapter, comparison)
    result.builder, result.assets = builder_versions(), adapter.assets
    return result


def starter(checkpoint: NemoCheckpoint) -> Starter:
    """Utterances of up to 20 s, in feature hops of the checkpoint's own window stride; served
    offline and streaming, as a Speech NIM is. Parity runs on seeded synthetic sound until the
    recipe lists real recordings (export.audio)."""
    stride = float((checkpoint.config.get("preprocessor") or {}).get("window_stride") or 0.01)
    frames = round(20 / stride)
    return Starter(inputs={AUDIO_INPUT: {"batch": [1, 4, 16], "frames": [1, min(300, frames), frames]}},
                   inputs_note=f"frames are feature hops ({stride * 1000:g} ms, the checkpoint's window stride): "
                               f"up to 20 s of audio per utterance",
                   serving={"modes": ["ofl", "str"], "streaming": {"chunk_ms": 400}},
                   notes={"export.audio": "add recordings (relative to this file) to check the front end on real "
                                          "speech; without them parity runs on seeded synthetic sound"})
