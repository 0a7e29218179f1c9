"""Export a source checkpoint to a reference fp32 ONNX, and refuse it unless it matches the source.

The exporter is PyTorch's dynamo-based `torch.onnx.export`. The older TorchScript exporter is
not used: with transformers 5 it traces the attention-mask path of BERT-family models into a
graph that is wrong whenever a batch has padding (max abs error ~2 on MiniLM), which is
exactly the failure a parity check exists to catch.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nimbuild.errors import ExportError, ParityError, first_line
from nimbuild.export.parity import Comparison
from nimbuild.progress import Reporter
from nimbuild.recipe import DimRange, Recipe
from nimbuild.sources.hf import HFCheckpoint

PARITY_SEED = 20240611
# Weights from this size on are written beside the graph (model.onnx.data) rather than inside it:
# the exporter then streams them to disk, where one protobuf holding them in memory, and its
# serialised copy, took BERT-large's (1.25 GB) compile to 8.2 GB at its peak (bench_scale). Models
# under it (every example) keep one file, so their graphs' digests, and profile ids, do not change.
EXTERNAL_WEIGHTS_FROM = 256 * 2**20


@dataclass
class InputSpec:
    name: str
    dims: dict[str, DimRange]  # axis name -> [min, opt, max], in axis order
    dtype: str = "int64"  # token ids; speech features are float32


@dataclass
class ReferenceExport:
    files: list[Path]  # model.onnx, plus model.onnx.data when weights live outside the graph
    inputs: list[InputSpec]
    output_names: list[str]
    parity: Comparison
    runtime_info: dict[str, Any]
    builder: dict[str, str]
    adapter: Any = None  # the loaded task adapter, for gating precision variants against the source
    assets: dict[str, Path] = field(default_factory=dict)  # files the runtime needs besides the tokenizer


def input_specs(recipe_inputs: dict[str, dict[str, DimRange]], model_inputs: list[str]) -> list[InputSpec]:
    """The recipe's inputs, plus the model's unlisted inputs with the dims of the first listed one."""
    unknown = [name for name in recipe_inputs if name not in model_inputs]
    if unknown:
        raise ExportError(
            f"export.inputs names {', '.join(unknown)}, but the model takes {', '.join(model_inputs)}"
        )
    first = next(iter(recipe_inputs.values()))
    specs = [InputSpec(name, dict(recipe_inputs.get(name, first))) for name in model_inputs]
    for spec in specs:
        if len(spec.dims) != 2:
            raise ExportError(f"export.inputs.{spec.name}: token inputs have two axes (batch, sequence), got {len(spec.dims)}")
    return specs


def parity_shapes(spec: InputSpec) -> list[tuple[int, int]]:
    """min, opt, and the two extremes (longest sequence at smallest batch, largest batch at shortest)."""
    (b, s) = spec.dims.values()
    shapes = [(b.min, s.min), (b.opt, s.opt), (b.min, s.max), (b.max, s.min)]
    return list(dict.fromkeys(shapes))


def export_reference(checkpoint: HFCheckpoint, recipe: Recipe, dest: Path, reporter: Reporter) -> ReferenceExport:
    if recipe.task == "text-generation":
        return _export_decoder(checkpoint, recipe, dest, reporter)
    if recipe.task in ("asr-ctc", "asr-rnnt"):
        return _export_asr(checkpoint, recipe, dest, reporter)
    if recipe.task == "tts":
        return _export_tts(checkpoint, recipe, dest, reporter)
    if recipe.task == "translation":
        return _export_translation(checkpoint, recipe, dest, reporter)
    from nimbuild.export.tasks import load_task

    with reporter.step(f"load {checkpoint.model_type} checkpoint for {recipe.task}"):
        adapter = load_task(recipe.task, checkpoint)
    specs = input_specs(recipe.export.inputs, adapter.input_names)
    _check_sequence_limit(specs, checkpoint)
    dest.mkdir(parents=True, exist_ok=True)
    onnx_path = dest / "model.onnx"
    with reporter.step(f"export reference ONNX (opset {recipe.export.opset})"):
        _export(adapter, specs, onnx_path, recipe.export.opset, _metadata(recipe, checkpoint, adapter), reporter)
        _check_graph(onnx_path, recipe.export.opset)
    with reporter.step("check parity against PyTorch"):
        comparison = check_parity(adapter, onnx_path, specs, recipe.export.parity)
    reporter.debug(comparison.describe())
    return _reference(onnx_path, specs, adapter, comparison)


def _export_decoder(checkpoint: HFCheckpoint, recipe: Recipe, dest: Path, reporter: Reporter) -> ReferenceExport:
    """A decoder-only LM with its KV cache (nimbuild.export.decoder)."""
    from nimbuild.export import decoder

    batch, context = decoder.context_limits(recipe.export.inputs)
    specs = [InputSpec("input_ids", dict(recipe.export.inputs["input_ids"]))]
    _check_sequence_limit(specs, checkpoint)
    with reporter.step(f"load {checkpoint.model_type} checkpoint for {recipe.task}"):
        adapter = decoder.load_decoder(checkpoint)
    adapter.runtime_info = {
        "max_sequence_length": context.max, "max_batch": batch.max, "eos_token_ids": adapter.eos_ids,
        "kv_cache": {"layers": adapter.layers, "heads": adapter.kv_heads, "head_dim": adapter.head_dim},
    }
    dest.mkdir(parents=True, exist_ok=True)
    onnx_path = dest / "model.onnx"
    opset, metadata = recipe.export.opset, _metadata(recipe, checkpoint, adapter)
    with reporter.step(f"export reference ONNX with KV cache (opset {opset})"):
        decoder.export_decoder(adapter, batch, context, onnx_path, opset,
                               lambda *args: _run_exporter(*args, onnx_path, opset, metadata, reporter))
        _check_graph(onnx_path, opset)
    with reporter.step("check greedy generation against transformers"):
        comparison = decoder.check_generation_parity(adapter, onnx_path, context.max, batch.max, recipe.export.parity)
    reporter.debug(comparison.describe())
    return _reference(onnx_path, specs, adapter, comparison)


def _export_asr(checkpoint, recipe: Recipe, dest: Path, reporter: Reporter) -> ReferenceExport:
    """A CTC speech model from a .nemo checkpoint (nimbuild.export.asr)."""
    from nimbuild.export import asr
    from nimbuild.sources.nemo import NemoCheckpoint

    if not isinstance(checkpoint, NemoCheckpoint):
        raise ExportError(f"task {recipe.task} builds NeMo checkpoints (source.nemo)")
    dest.mkdir(parents=True, exist_ok=True)
    with reporter.step(f"restore {checkpoint.model_class} with NeMo"):
        adapter = asr.load_adapter(checkpoint, recipe, dest / "asr")
    onnx_path = dest / "model.onnx"
    with reporter.step(f"export reference ONNX with NeMo (opset {recipe.export.opset})"):
        asr.export_graph(adapter, onnx_path, recipe.export.opset, _metadata(recipe, checkpoint, adapter), reporter)
        _check_graph(onnx_path, recipe.export.opset)
    specs = asr.input_specs(recipe.export.inputs, adapter.runtime_info)
    audio = asr.parity_audio(recipe, adapter.runtime_info["sample_rate"])
    with reporter.step("check front end and graph against NeMo"):
        comparison = asr.check_graph_parity(adapter, onnx_path, specs, recipe.export.parity, audio)
    reporter.debug(comparison.describe())
    reference = _reference(onnx_path, specs, adapter, comparison)
    reference.builder, reference.assets = asr.builder_versions(), adapter.assets
    return reference


def _export_tts(checkpoint, recipe: Recipe, dest: Path, reporter: Reporter) -> ReferenceExport:
    """A FastPitch spectrogram generator from a .nemo checkpoint (nimbuild.export.tts)."""
    from nimbuild.export import asr, tts
    from nimbuild.sources.nemo import NemoCheckpoint

    if not isinstance(checkpoint, NemoCheckpoint):
        raise ExportError(f"task {recipe.task} builds NeMo checkpoints (source.nemo)")
    dest.mkdir(parents=True, exist_ok=True)
    specs = tts.input_specs(recipe.export.inputs)
    with reporter.step(f"restore {checkpoint.model_class} with NeMo"):
        adapter = tts.load_adapter(checkpoint, recipe, dest / "tts")
    onnx_path = dest / "model.onnx"
    with reporter.step(f"export reference ONNX with NeMo (opset {recipe.export.opset})"):
        tts.export_graph(adapter, onnx_path, recipe.export.opset, _metadata(recipe, checkpoint, adapter), reporter)
        _check_graph(onnx_path, recipe.export.opset)
    with reporter.step("check tokens, durations and mel spectrograms against NeMo"):
        comparison = tts.check_parity(adapter, onnx_path, specs, recipe.export.parity, recipe.export.texts)
    reporter.debug(comparison.describe())
    reference = _reference(onnx_path, specs, adapter, comparison)
    reference.builder, reference.assets = asr.builder_versions(), adapter.assets
    return reference


def _export_translation(checkpoint: HFCheckpoint, recipe: Recipe, dest: Path, reporter: Reporter) -> ReferenceExport:
    """A MarianMT-class encoder-decoder: the encoder graph, and the decoder's with its KV cache
    (nimbuild.export.translation)."""
    from nimbuild.export import translation

    with reporter.step(f"load {checkpoint.model_type} checkpoint for {recipe.task}"):
        adapter = translation.load_adapter(checkpoint, recipe)
    dest.mkdir(parents=True, exist_ok=True)
    onnx_path = dest / "model.onnx"
    opset, metadata = recipe.export.opset, _metadata(recipe, checkpoint, adapter)
    with reporter.step(f"export encoder and KV-cache decoder ONNX (opset {opset})"):
        translation.export_graphs(adapter, recipe, onnx_path, lambda module, example, names, outputs, dynamic, path:
                                  _run_exporter(module, example, names, outputs, dynamic, path, opset, metadata, reporter))
        _check_graph(onnx_path, opset)
        _check_graph(adapter.assets[translation.DECODER_GRAPH], opset)
    with reporter.step("check greedy translations against transformers"):
        comparison = translation.check_parity(adapter, onnx_path, recipe.export.parity, recipe.export.texts)
    reporter.debug(comparison.describe())
    batch, source, _ = translation.limits(recipe.export.inputs)
    specs = [InputSpec(name, {"batch": batch, "sequence": source}) for name in translation.ENCODER_INPUTS]
    reference = _reference(onnx_path, specs, adapter, comparison)
    reference.assets = adapter.assets
    return reference


def _metadata(recipe: Recipe, checkpoint: HFCheckpoint, adapter) -> dict[str, str]:
    return {
        "nimbuild.task": recipe.task,
        "nimbuild.source_digest": checkpoint.digest(),
        "nimbuild.runtime_info": json.dumps(adapter.runtime_info, sort_keys=True),
    }


def _reference(onnx_path: Path, specs: list[InputSpec], adapter, comparison: Comparison) -> ReferenceExport:
    data = onnx_path.with_name("model.onnx.data")
    return ReferenceExport(
        files=[onnx_path] + ([data] if data.exists() else []), inputs=specs, output_names=adapter.output_names,
        parity=comparison, runtime_info=adapter.runtime_info, builder=_builder_versions(), adapter=adapter,
    )


def _check_sequence_limit(specs: list[InputSpec], checkpoint: HFCheckpoint) -> None:
    limit = checkpoint.config.get("max_position_embeddings") or checkpoint.config.get("n_positions")
    if not limit:
        return
    for spec in specs:
        name, seq = list(spec.dims.items())[1]
        if seq.max > int(limit):
            raise ExportError(
                f"export.inputs.{spec.name}.{name}: max {seq.max} exceeds the model's {limit} positions"
            )


def _export(adapter, specs: list[InputSpec], path: Path, opset: int, metadata: dict[str, str], reporter: Reporter) -> None:
    import torch

    dims: dict[str, Any] = {}
    dynamic_shapes = []  # positional, matching the wrapper's forward(*inputs)
    example = []
    for spec in specs:
        axes = {}
        shape = []
        for axis, (dim_name, rng) in enumerate(spec.dims.items()):
            if rng.min == rng.max:
                shape.append(rng.min)  # a static axis
                continue
            dims.setdefault(dim_name, torch.export.Dim(dim_name, min=rng.min, max=rng.max))
            axes[axis] = dims[dim_name]
            # an example size of 1 would make the exporter specialise the axis to 1
            shape.append(min(max(rng.opt, 2), rng.max))
        dynamic_shapes.append(axes or None)
        example.append(torch.ones(shape, dtype=torch.long))
    _run_exporter(adapter.module, tuple(example), [s.name for s in specs], adapter.output_names,
                  (tuple(dynamic_shapes),), path, opset, metadata, reporter)


def _run_exporter(module, example: tuple, input_names: list[str], output_names: list[str], dynamic_shapes: tuple,
                  path: Path, opset: int, metadata: dict[str, str], reporter: Reporter) -> None:
    """torch.onnx.export (dynamo), quiet, with debug metadata stripped and our metadata added."""
    import torch

    log = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, example, None, input_names=input_names, output_names=output_names,
                opset_version=opset, dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False,
            )
            _strip_debug_metadata(program.model)
            program.model.metadata_props.update(metadata)
            program.save(path, external_data=_weight_bytes(program.model) > EXTERNAL_WEIGHTS_FROM)
    except Exception as e:  # the exporter raises many types; each means this graph cannot be exported
        reporter.debug(log.getvalue())
        raise ExportError(f"ONNX export failed: {_root_cause(e)}") from None
    reporter.debug(log.getvalue())


def _weight_bytes(model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def _strip_debug_metadata(model) -> None:
    """Drop the exporter's per-node debug metadata (stack traces with absolute file paths and line
    numbers, FX node dumps). It is ~0.7% of MiniLM's bytes, means nothing to a runtime, and would
    make the graph's digest, and so the profile id, depend on where and from which line of code
    nimbuild ran: two CI runners would disagree about the same model."""
    import onnx_ir as ir

    graphs = [model.graph, *model.functions.values()]
    for graph in graphs:
        for node in ir.traversal.RecursiveGraphIterator(graph):
            node.metadata_props.clear()


def _root_cause(error: BaseException) -> str:
    """The innermost exception's first lines: the exporter wraps the real reason in generic advice."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()][:4]
    return f"{type(error).__name__}: {' '.join(lines)}" if lines else type(error).__name__


def _check_graph(path: Path, opset: int) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # ValidationError or shape-inference errors
        first = first_line(e)
        hint = " (the exporter targets opset 18 natively; try export.opset: 18 or higher)" if opset < 18 else ""
        raise ExportError(f"the exported graph is not valid ONNX: {first}{hint}") from None


def open_session(path: Path, fused: bool = True):
    """onnxruntime on the CPU; fused=False runs the graph exactly as written (no graph fusions)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not fused:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ExportError(f"{path}: onnxruntime cannot load the graph: {first_line(e)}") from None


def check_parity(adapter, onnx_path: Path, specs: list[InputSpec], tolerance) -> Comparison:
    """Run the graph with onnxruntime and the source with PyTorch on seeded inputs; refuse on mismatch."""
    import torch

    session = open_session(onnx_path)
    comparison = Comparison(atol=tolerance.atol, rtol=tolerance.rtol, cosine_min=tolerance.cosine_min)
    for i, (batch, seq) in enumerate(parity_shapes(specs[0])):
        feeds = adapter.sample_inputs({"batch": batch, "sequence": seq}, seed=PARITY_SEED + i)
        with torch.inference_mode():
            reference = adapter.module(*(torch.from_numpy(feeds[s.name]) for s in specs))
        reference = reference if isinstance(reference, (tuple, list)) else (reference,)
        candidate = session.run(adapter.output_names, feeds)
        comparison.add(
            f"{batch}x{seq}",
            {n: r.numpy() for n, r in zip(adapter.output_names, reference)},
            dict(zip(adapter.output_names, candidate)),
        )
    if not comparison.passed:
        raise ParityError(
            f"the exported ONNX does not match the source model (shapes {', '.join(comparison.shapes)}):\n"
            + comparison.describe()
        )
    return comparison


def _builder_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {
        "exporter": "torch.onnx (dynamo)",
        **{name: version(name) for name in ("torch", "transformers", "onnx", "onnxruntime", "onnxscript")},
    }
