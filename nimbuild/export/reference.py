"""What every exporter shares: the reference export's record, the exporter call, the checks on a
written graph, and onnxruntime sessions for parity.

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
from typing import TYPE_CHECKING, Any

from nimbuild.errors import ExportError, first_line
from nimbuild.export.parity import Comparison
from nimbuild.shapes import DimRange, InputSpec
from nimbuild.util.progress import Reporter

if TYPE_CHECKING:
    from nimbuild.recipe import Recipe
    from nimbuild.sources.hf import HFCheckpoint

PARITY_SEED = 20240611
# Weights from this size on are written beside the graph (model.onnx.data) rather than inside it:
# the exporter then streams them to disk, where one protobuf holding them in memory, and its
# serialised copy, took BERT-large's (1.25 GB) compile to 8.2 GB at its peak (bench_scale). Models
# under it (every example) keep one file, so their graphs' digests, and profile ids, do not change.
EXTERNAL_WEIGHTS_FROM = 256 * 2**20


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


def graph_metadata(recipe: Recipe, checkpoint: HFCheckpoint, adapter) -> dict[str, str]:
    return {
        "nimbuild.task": recipe.task,
        "nimbuild.source_digest": checkpoint.digest(),
        "nimbuild.runtime_info": json.dumps(adapter.runtime_info, sort_keys=True),
    }


def reference(onnx_path: Path, specs: list[InputSpec], adapter, comparison: Comparison) -> ReferenceExport:
    data = onnx_path.with_name("model.onnx.data")
    return ReferenceExport(
        files=[onnx_path] + ([data] if data.exists() else []), inputs=specs, output_names=adapter.output_names,
        parity=comparison, runtime_info=adapter.runtime_info, builder=builder_versions(), adapter=adapter,
    )


def check_sequence_limit(specs: list[InputSpec], checkpoint: HFCheckpoint) -> None:
    limit = positions(checkpoint, 0)
    if not limit:
        return
    for spec in specs:
        name, seq = list(spec.dims.items())[1]
        if seq.max > limit:
            raise ExportError(
                f"export.inputs.{spec.name}.{name}: max {seq.max} exceeds the model's {limit} positions"
            )


def run_exporter(module, example: tuple, input_names: list[str], output_names: list[str], dynamic_shapes: tuple,
                  path: Path, opset: int, metadata: dict[str, str], reporter: Reporter, streamed=None) -> None:
    """torch.onnx.export (dynamo), quiet, with debug metadata stripped and our metadata added.
    `streamed` (nimbuild.export.streamed.attach, bound to a checkpoint) optimises the graph and
    gives it its weights from the checkpoint, for a module whose parameters are placeholders."""
    import torch

    log = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, example, None, input_names=input_names, output_names=output_names,
                opset_version=opset, dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False,
                optimize=streamed is None,
            )
            if streamed is not None:
                streamed(program.model)
            _strip_debuggraph_metadata(program.model)
            program.model.metadata_props.update(metadata)
            if streamed is not None:
                from nimbuild.export.streamed import save

                save(program.model, path)
            else:
                program.save(path, external_data=_weight_bytes(program.model) > EXTERNAL_WEIGHTS_FROM)
            _let_go(program)
    except Exception as e:  # the exporter raises many types; each means this graph cannot be exported
        reporter.debug(log.getvalue())
        raise ExportError(f"ONNX export failed: {_root_cause(e)}") from None
    reporter.debug(log.getvalue())


def _let_go(program) -> None:
    """Drop the exported graph's hold on the model's weights once they are written. Its
    initializers wrap the module's parameters (TorchTensor), and onnxscript's rewriter keeps the
    last graph it matched (a module-level rule's matcher holds `_graph`), so the source's weights
    outlived the source model and stayed resident beside the onnxruntime session that checks the
    graph (Qwen2.5-0.5B's shapes: 4.9 GiB at that step)."""
    graph = program.model.graph
    # the inputs' reference counter keeps the parameters the exporter lifted out of the inputs (a
    # tied embedding's among them) after they left the list
    lifted = list(getattr(graph.inputs, "_ref_counter", None) or [])
    for value in [*graph.inputs, *lifted, *graph.initializers.values()]:
        value.const_value = None
    program.model.graph.initializers.clear()
    program.exported_program = None


def _weight_bytes(model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def _strip_debuggraph_metadata(model) -> None:
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


def check_graph(path: Path, opset: int) -> None:
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


def builder_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {
        "exporter": "torch.onnx (dynamo)",
        **{name: version(name) for name in ("torch", "transformers", "onnx", "onnxruntime", "onnxscript")},
    }


@dataclass
class Starter:
    """What an exporter proposes for a new recipe of its checkpoint (`nimbuild recipe init`): the
    input ranges, read from the checkpoint where it says (positions, sample rate), and the sections
    its task needs. Each comment says where a value came from, for the YAML that is written."""

    inputs: dict[str, dict[str, list[int]]]
    inputs_note: str
    export: dict[str, Any] = field(default_factory=dict)  # export.texts / export.audio
    source: dict[str, Any] = field(default_factory=dict)  # source.vocoder
    serving: dict[str, Any] = field(default_factory=dict)  # serving.voice / languages / modes
    notes: dict[str, str] = field(default_factory=dict)  # a comment per section or key ("export.texts")
    # why the task's engine targets cannot build this checkpoint: they are written commented out with it
    engines_refused: str = ""
    parity: dict[str, float] = field(default_factory=lambda: {"atol": 1.0e-4, "rtol": 1.0e-3, "cosine_min": 0.9999})


# model types whose position ids start after the padding id (transformers' create_position_ids_from_input_ids)
OFFSET_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "longformer", "mpnet"}


def positions(checkpoint: HFCheckpoint, default: int) -> int:
    """The longest sequence the checkpoint's position embeddings allow (or `default` if it names none).
    Not `max_length`: that is transformers' generation default (20 in many configs), not a limit."""
    config = checkpoint.config
    value = config.get("max_position_embeddings") or config.get("n_positions")
    if not (isinstance(value, int) and value > 0):
        return default
    if config.get("model_type") in OFFSET_POSITIONS and isinstance(config.get("pad_token_id"), int):
        # RoBERTa's family numbers positions from pad_token_id + 1 (514 positions hold 512 tokens)
        value -= config["pad_token_id"] + 1
    return value
