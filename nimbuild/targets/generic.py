"""Profile workspaces. Generic profiles (backend onnxruntime): the verified ONNX itself (the reference,
or a gated precision variant), runnable anywhere, CPU included. TensorRT-RTX profiles: an engine.

A workspace holds everything a runtime needs and nothing it must fetch elsewhere:

    model.onnx [model.onnx.data]   the graph (and its external weights, for models over 2 GB)
    model_info.json                 task, inputs with [min, opt, max] shapes, outputs, pooling, serving
    tokenizer/                      the checkpoint's tokenizer files, byte for byte
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from nimbuild.recipe import Recipe

MODEL_INFO = "model_info.json"
MODEL_INFO_FORMAT = "nimbuild.model_info/1"


def make_generic_workspace(recipe: Recipe, checkpoint, reference, graph: Path, precision: str, workspace: Path) -> None:
    """The graph itself (the reference, or a gated precision variant) with its tokenizer and model_info."""
    workspace.mkdir(parents=True)
    for src in [graph] + [f for f in graph.parent.glob(graph.name + ".data")]:
        _link_or_copy(src, workspace / src.name)
    _write_common(recipe, checkpoint, model_info(recipe, reference, precision, graph), workspace, reference.assets)


def make_engine_workspace(recipe: Recipe, checkpoint, reference, graph: Path, variant, workspace: Path,
                          built: dict | None = None) -> dict:
    """An engine for one compute capability (TensorRT-RTX ahead of time, or TensorRT on this GPU),
    with the same tokenizer and model_info. `built` remembers engines by graph, backend and
    capability, so profiles that differ only in how they are served (speech ofl/str) share one build."""
    tags = dict(variant.tags)
    workspace.mkdir(parents=True)
    key = (str(graph), tags["backend"], tags["compute_capability"])
    if built is not None and key in built:
        plan, record = built[key]
        _link_or_copy(plan, workspace / "model.plan")
    elif tags["backend"] == "tensorrt_rtx":
        from nimbuild.targets.tensorrt_rtx import build_engine

        record = build_engine(graph, reference.inputs, tags["compute_capability"], workspace / "model.plan")
    else:
        from nimbuild.targets.tensorrt import build_engine

        record = build_engine(graph, reference.inputs, tags["compute_capability"], workspace / "model.plan",
                              recipe.targets[variant.target_index])
    if built is not None:
        built.setdefault(key, (workspace / "model.plan", record))
    info = {**model_info(recipe, reference, variant.precision, graph), "graph": None, "engine": "model.plan",
            "engine_builder": record}
    _write_common(recipe, checkpoint, info, workspace, reference.assets)
    return record


def make_rmir_workspace(recipe: Recipe, checkpoint, reference, graph: Path, precision: str, min_cc: str,
                        workspace: Path) -> None:
    """One model.rmir: the graph, model_info and tokenizer, to become an engine on the target."""
    import tempfile

    from nimbuild.sources.hf import copy_assets
    from nimbuild.targets import rmir

    workspace.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        info = Path(tmp) / MODEL_INFO
        info.write_text(json.dumps({**model_info(recipe, reference, precision, graph), "graph": None,
                                    "engine": "model.plan"}, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tokenizer = Path(tmp) / "tokenizer"
        copied = copy_assets(checkpoint, tokenizer)
        files = {"model.onnx": graph, MODEL_INFO: info, **{f"tokenizer/{n}": tokenizer / n for n in copied},
                 **reference.assets}
        for extra in graph.parent.glob(graph.name + ".data"):
            files[extra.name] = extra
        rmir.pack(workspace / "model.rmir", rmir.metadata_for(recipe, reference, precision, min_cc), files)


def graph_outputs(graph: Path, names: list[str]) -> list[dict]:
    import onnx
    from onnx import helper

    declared = {o.name: o.type.tensor_type for o in onnx.load(str(graph), load_external_data=False).graph.output}
    outputs = []
    for name in names:
        tensor = declared[name]
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        outputs.append({"name": name, "dtype": dtype, "shape": shape})
    return outputs


def _write_common(recipe: Recipe, checkpoint, info: dict, workspace: Path, assets: dict[str, Path] | None = None) -> None:
    from nimbuild.sources.hf import copy_assets

    copy_assets(checkpoint, workspace / "tokenizer")
    for rel, src in sorted((assets or {}).items()):  # e.g. a speech model's filterbank and vocabulary
        (workspace / rel).parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(src, workspace / rel)
    (workspace / MODEL_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def model_info(recipe: Recipe, reference, precision: str, graph: Path | None = None) -> dict:
    """What a runtime needs to serve the profile. Outputs carry the graph's own element types and
    shapes (a name for a dynamic dimension, a number for a fixed one): a Triton configuration for
    an engine must state them exactly, and an engine cannot be asked."""
    return {
        "format": MODEL_INFO_FORMAT,
        "model": recipe.name,
        "release": recipe.release,
        "task": recipe.task,
        "precision": precision,
        "graph": "model.onnx",
        "tokenizer": "tokenizer",
        "inputs": [
            {
                "name": spec.name,
                "dtype": spec.dtype,
                "dims": list(spec.dims),
                "shapes": {dim: [r.min, r.opt, r.max] for dim, r in spec.dims.items()},
            }
            for spec in reference.inputs
        ],
        "outputs": graph_outputs(graph or reference.files[0], reference.output_names),
        "runtime": reference.runtime_info,
        "serving": recipe.serving.spec_for(recipe.task),
    }


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link within one filesystem (instant for multi-GB graphs), copy otherwise."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
