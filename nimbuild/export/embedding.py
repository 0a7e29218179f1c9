"""Encoder models from transformers (sentence embeddings: BERT, MPNet, XLM-R...) to one ONNX graph,
checked against PyTorch on seeded inputs at the recipe's extreme shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nimbuild.errors import ParityError
from nimbuild.export.parity import Comparison
from nimbuild.export.reference import (
    PARITY_SEED,
    InputSpec,
    ReferenceExport,
    Starter,
    check_graph,
    check_sequence_limit,
    graph_metadata,
    input_specs,
    open_session,
    parity_shapes,
    positions,
    reference,
    run_exporter,
)
from nimbuild.recipe import Recipe
from nimbuild.sources.hf import HFCheckpoint
from nimbuild.util.progress import Reporter


def export(checkpoint: HFCheckpoint, recipe: Recipe, dest: Path, reporter: Reporter) -> ReferenceExport:
    from nimbuild.export.adapters import load_task

    with reporter.step(f"load {checkpoint.model_type} checkpoint for {recipe.task}"):
        adapter = load_task(recipe.task, checkpoint)
    specs = input_specs(recipe.export.inputs, adapter.input_names)
    check_sequence_limit(specs, checkpoint)
    dest.mkdir(parents=True, exist_ok=True)
    onnx_path = dest / "model.onnx"
    with reporter.step(f"export reference ONNX (opset {recipe.export.opset})"):
        _export(adapter, specs, onnx_path, recipe.export.opset, graph_metadata(recipe, checkpoint, adapter), reporter)
        check_graph(onnx_path, recipe.export.opset)
    with reporter.step("check parity against PyTorch"):
        comparison = check_parity(adapter, onnx_path, specs, recipe.export.parity)
    reporter.debug(comparison.describe())
    return reference(onnx_path, specs, adapter, comparison)


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
    run_exporter(adapter.module, tuple(example), [s.name for s in specs], adapter.output_names,
                  (tuple(dynamic_shapes),), path, opset, metadata, reporter)


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


def starter(checkpoint: HFCheckpoint) -> Starter:
    """Sentences of up to 512 tokens (or the model's position limit), batches of up to 64."""
    longest = min(positions(checkpoint, 512), 512)
    return Starter(inputs={"input_ids": {"batch": [1, 8, 64], "sequence": [1, min(128, longest), longest]}},
                   inputs_note=f"tokens per sentence: up to {longest} (the model has "
                               f"{positions(checkpoint, 0) or 'no stated'} positions); the other token inputs "
                               "(attention_mask, token_type_ids) take the same ranges")
