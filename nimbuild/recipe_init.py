"""`nimbuild recipe init CHECKPOINT`: a first recipe, read from the checkpoint itself.

The task table picks the task (config.json's `architectures`, or the NeMo class a .nemo names);
the task's exporter proposes the input ranges from what the checkpoint says (position limit,
window stride, alphabet, language pair) and the sections its task needs; the targets are those a
user starts from (onnxruntime everywhere, TensorRT-RTX engines and an RMIR where this machine has
the builder). The recipe is validated exactly as `recipe check` does before a byte is written, and
every value carries a comment saying where it came from, so it reads as a starting point to edit.
"""

from __future__ import annotations

import importlib
import os
import re
import textwrap
from pathlib import Path
from typing import Any

import yaml

from nimbuild.errors import NimbuildError
from nimbuild.tasks import TASKS, Task, task, task_for_architectures, task_for_nemo_class

# Heads no NIM task serves as such; the encoder beneath one can still be built as embeddings
_HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering", "ForMaskedLM",
          "ForMultipleChoice", "ForNextSentencePrediction", "ForPreTraining")
RTX_CAPABILITIES = ["8.0", "8.6", "8.9", "12.0"]  # Ampere, Ampere (A10), Ada, Blackwell workstation


def open_checkpoint(spec: str, base_dir: Path):
    """The checkpoint a spec names: a .nemo file (or an unpacked one), else a Hugging Face
    directory, hf://org/name[@revision] (from the local hub cache) or pkg://package/path."""
    path = (base_dir / Path(spec).expanduser()) if "://" not in spec else None
    if path is not None and (path.suffix == ".nemo" or (path.is_dir() and any(path.rglob("model_config.yaml")))):
        from nimbuild.sources.nemo import resolve_nemo

        return resolve_nemo(str(path.resolve()), base_dir)
    from nimbuild.sources.hf import resolve_hf

    return resolve_hf(spec if path is None else str(path.resolve()), base_dir)


def choose_task(checkpoint, task_id: str | None) -> Task:
    """--task if given (it must build this kind of checkpoint), else the table's match, else one
    message saying what the checkpoint is and what nimbuild builds."""
    kind = "nemo" if hasattr(checkpoint, "model_class") else "hf"
    if task_id:
        row = task(task_id)
        if row.source != kind:
            raise NimbuildError(f"task {row.id} builds {_kind_name(row.source)} checkpoints; "
                                f"{checkpoint.spec} is a {_kind_name(kind)} checkpoint")
        return row
    if kind == "nemo":
        row = task_for_nemo_class(checkpoint.model_class)
        if row is None:
            raise NimbuildError(f"{checkpoint.spec}: NeMo class {checkpoint.model_class} is none nimbuild builds "
                                f"({_takes('nemo')})" + (
                                    "; a vocoder is a tts recipe's source.vocoder, not a model of its own"
                                    if checkpoint.model_class == "HifiGanModel" else ""))
        return row
    architectures = [str(a) for a in checkpoint.config.get("architectures") or []]
    row = task_for_architectures(architectures)
    if row is None:
        head = next((h for a in architectures for h in _HEADS if a.endswith(h)), None)
        hint = (f"; a {head.removeprefix('For')} head is not served by any task here: --task embedding builds "
                "the encoder beneath it as sentence embeddings") if head else ""
        raise NimbuildError(f"{checkpoint.spec}: config.json's architectures ({', '.join(architectures) or 'none'}) "
                            f"match no task nimbuild builds ({_takes('hf')}){hint}")
    # a task whose exporter knows which architectures a test has proved (text generation's
    # families) does not take an unproved one on a class name alone; --task still does
    unproved = getattr(importlib.import_module(f"nimbuild.export.{row.module}"), "unproved", None)
    if unproved and (why := unproved(checkpoint)):
        raise NimbuildError(f"{checkpoint.spec}: {why}")
    return row


def init_recipe(spec: str, out: Path, task_id: str | None = None, name: str | None = None) -> tuple[str, Task]:
    """The recipe's text for the checkpoint `spec` (as the user wrote it, relative to the current
    directory), to be written at `out`; validated as `recipe check` validates it."""
    from nimbuild.compile import plan_variants
    from nimbuild.recipe import NAME_PATTERN, parse_recipe

    checkpoint = open_checkpoint(spec, Path.cwd())
    row = choose_task(checkpoint, task_id)
    start = importlib.import_module(f"nimbuild.export.{row.module}").starter(checkpoint)
    name = name or _name_of(spec)
    if not re.match(NAME_PATTERN, name):
        raise NimbuildError(f"--name {name!r}: a recipe name is lowercase letters, digits, '.', '_' and '-'")
    text = _render(row, name, _source_spec(spec, checkpoint, out), start, _why(row, checkpoint, task_id))
    recipe = parse_recipe(text, filename=str(out), base_dir=out.resolve().parent)
    plan_variants(recipe)  # what `recipe check` runs: a recipe that plans is one compile can build
    return text, row


# --- the text ---------------------------------------------------------------------------------------

def _render(row: Task, name: str, source: str, start, why: str) -> str:
    precisions, targets, serving = _defaults(row, start.engines_refused)
    serving.update(start.serving)
    notes = start.notes
    title = "" if row.title == row.id else f" ({row.title})"
    lines = _comment(f"A first recipe for {source}, written by `nimbuild recipe init` from the checkpoint itself. "
                     f"Task {row.id}{title}: {why}. Edit freely; `nimbuild recipe check` says what is wrong.")
    lines += [f"name: {name}", "release: 0.1.0", "source:", f"  {row.source}: {_flow(source)}"]
    lines += _entries(start.source, "source", notes, indent=2)
    lines += [f"task: {row.id}", "export:", "  opset: 18", *_comment(start.inputs_note, 2), "  inputs:"]
    lines += [f"    {k}: {_flow(v)}" for k, v in start.inputs.items()]
    lines += ["  # how closely the ONNX graph must reproduce the source framework",
              f"  parity: {_flow(start.parity)}"]
    lines += _entries(start.export, "export", notes, indent=2)
    if "export.audio" in notes:
        lines += [*_comment(notes["export.audio"], 2), "  # audio: [speech/first.wav, speech/second.wav]"]
    lines += ["# the reference (fp32) and the variants, each gated against it on a seeded evaluation set", "precisions:"]
    lines += [f"  {k}: {_flow(v)}" for k, v in precisions.items()]
    lines += ["targets:"] + [line for comment, target in targets for line in _target_lines(comment, target)]
    lines += ["serving:"] + _entries(serving, "serving", notes, indent=2)
    return "\n".join(lines) + "\n"


def _defaults(row: Task, engines_refused: str = "") -> tuple[dict, list[tuple[str, dict | None]], dict[str, Any]]:
    """Precisions, targets (with a comment each) and serving a user starts from, by how the task's
    targets expand (the task table's `targets` rule); engine targets the exporter says cannot build
    this checkpoint are written commented out with its reason."""
    from nimbuild.targets.tensorrt_rtx import rtx_version

    rtx = rtx_version() is not None
    if row.targets == "graph":  # one graph: the precisions onnxruntime and engines run well
        precisions = {"fp32": {}, "fp16": {"gate": {"cosine_min": 0.999}}, "int8": {"gate": {"cosine_min": 0.98}}}
        engine, generic = ["fp16"], ["fp32", "fp16", "int8"]
        serving = {"max_batch_size": 64, "dynamic_batching": {"max_queue_delay_us": 0}, "profile": "throughput"}
    else:
        precisions, engine, generic = {"fp32": {}}, ["fp32"], ["fp32"]
        serving = {"max_batch_size": 16 if row.streaming else 8, "dynamic_batching": {"max_queue_delay_us": 0}}
    targets: list[tuple[str, dict | None]] = [
        ("onnxruntime on any machine, GPU or not", {"type": "generic", "backend": "onnxruntime", "precisions": generic})]
    if row.targets == "llm":
        precisions["fp16"] = {}
        serving = {"max_batch_size": 8, "profile": "throughput"}
        engine = {"type": "prebuilt", "backend": "tensorrt_llm", "compute_capabilities": ["9.0"], "precisions": ["fp16"]}
        if engines_refused:
            why = textwrap.wrap(f"no TensorRT-LLM engine: {engines_refused}", width=96)
            targets += [(line, None) for line in why] + [(f"- {_flow(engine)}", None)]
        else:
            targets.append(("TensorRT-LLM engines, built on a GPU host with tensorrt_llm installed (an NGC TensorRT-LLM "
                            "container); skipped elsewhere with the reason", engine))
        return precisions, targets, serving
    engines = {"type": "prebuilt", "backend": "tensorrt_rtx", "precisions": engine,
               "compute_capabilities": RTX_CAPABILITIES if row.targets == "graph" else ["8.9"]}
    rmir = {"type": "rmir", "min_compute_capability": "7.5", "precisions": engine}
    if rtx:
        targets += [("TensorRT-RTX engines, built here ahead of time for each compute capability", engines),
                    ("an RMIR archive: the graph, built into an engine on the target GPU at first start", rmir)]
    else:
        targets += [("TensorRT-RTX engines and an RMIR need TensorRT for RTX (pip install 'nimbuild[trt]'):",
                     None), (f"- {_flow(engines)}", None), (f"- {_flow(rmir)}", None)]
    return precisions, targets, serving


def _target_lines(comment: str, target: dict | None) -> list[str]:
    if target is None:
        return [f"  # {comment}"]
    return [*_comment(comment, 2), f"  - {_flow(target)}"]


def _entries(values: dict[str, Any], section: str, notes: dict[str, str], indent: int) -> list[str]:
    pad = " " * indent
    out = []
    for key, value in values.items():
        if f"{section}.{key}" in notes:
            out += _comment(notes[f"{section}.{key}"], indent)
        if isinstance(value, list) and any(isinstance(v, str) and " " in v for v in value):  # sentences
            out += [f"{pad}{key}:"] + [f"{pad}  - {_flow(v)}" for v in value]
        else:
            out.append(f"{pad}{key}: {_flow(value)}")
    return out


def _flow(value: Any) -> str:
    """One YAML value on one line, quoted where YAML needs it."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000, allow_unicode=True)
    return text.strip().removesuffix("...").strip()


def _comment(text: str, indent: int = 0) -> list[str]:
    """A comment wrapped to the width of the examples' recipes."""
    pad = " " * indent
    return textwrap.wrap(text, width=100, initial_indent=f"{pad}# ", subsequent_indent=f"{pad}# ")


# --- names and paths --------------------------------------------------------------------------------

def _source_spec(spec: str, checkpoint, out: Path) -> str:
    """hf:// and pkg:// as given; a local checkpoint relative to the recipe, as the examples write it."""
    if "://" in spec:
        return spec
    local = Path(checkpoint.source if hasattr(checkpoint, "model_class") else checkpoint.path).resolve()
    return os.path.relpath(local, out.resolve().parent)


def _name_of(spec: str) -> str:
    """A recipe name from the checkpoint's: the package of pkg://, the repository of hf://, else the
    file or directory name."""
    if spec.startswith("pkg://"):
        base = spec.removeprefix("pkg://").split("/")[0]
    elif spec.startswith("hf://"):
        base = spec.removeprefix("hf://").split("@")[0].rstrip("/").split("/")[-1]
    else:
        base = Path(spec.rstrip("/")).name.removesuffix(".nemo")
    name = re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-._")
    return name or "model"


def _kind_name(kind: str) -> str:
    return "NeMo (.nemo)" if kind == "nemo" else "Hugging Face"


def _takes(kind: str) -> str:
    return "; ".join(f"{t.id}: {', '.join(t.takes)}" for t in TASKS if t.source == kind)


def _why(row: Task, checkpoint, task_id: str | None) -> str:
    if task_id:
        return "as --task asked"
    if row.source == "nemo":
        return f"the checkpoint is a NeMo {checkpoint.model_class}"
    why = f"config.json's architectures are {', '.join(checkpoint.config.get('architectures') or [])}"
    explains = getattr(importlib.import_module(f"nimbuild.export.{row.module}"), "explains", None)
    return f"{why}: {explains(checkpoint)}" if explains else why
