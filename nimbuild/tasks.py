"""The task table: every task nimbuild builds and runtime_min serves, one row each.

Everything that differs by task and is not the task's own code is a field here, and the stages
read it instead of listing tasks again: the recipe schema (which source, which sections a recipe of
the task must or must not have), `recipe init` (which checkpoints it takes, and the shapes it
starts from), export (its exporter), targets (how its targets expand into profiles), RMIR
(the asset folders that travel with an engine), the registry's ModelPack config (what goes in and
comes out) and runtime_min (its folder of `runtime_min/tasks/`).

Adding a task is a row here plus its own modules, named by the row's short `module` name: an
exporter `nimbuild/export/<module>.py`, a runtime folder `runtime_min/tasks/<module>/` (implementing
`runtime_min.tasks.TaskHooks`), any serving code in `nimbuild/serving/`, and an example under
`examples/`. docs/development.md has the checklist.

This module is read on target machines too (runtime_min finds a profile's task here), so it
imports nothing beyond the standard library and nimbuild.errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nimbuild.errors import NimbuildError


@dataclass(frozen=True)
class Task:
    id: str  # as recipes, profiles (model_info.json) and manifests write it
    title: str  # what it is, in messages: "speech recognition"
    source: str  # the checkpoint kind: "hf" (a transformers directory) or "nemo" (a .nemo archive)
    # what `recipe init` recognises: regular expressions over config.json's `architectures` (hf), or
    # the NeMo model classes a .nemo's config names as its target (nemo)
    takes: tuple[str, ...]
    # its one short name: its exporter is nimbuild/export/<module>.py (export(), starter()) and its
    # runtime folder runtime_min/tasks/<module>/ (TaskHooks); tasks that share both share the name
    module: str
    targets: str  # how a target expands into profiles (nimbuild.compile: graph, llm, asr, tts, translation)
    modality: tuple[tuple[str, ...], tuple[str, ...]]  # (inputs, outputs) in ModelPack's vocabulary
    transformer: bool = False  # ModelPack's config.architecture
    assets: tuple[str, ...] = ()  # folders beside the graph the runtime reads (an RMIR archive carries them)
    # recipe fields that mean something only for this task (and tasks that share them), and those it
    # cannot do without
    owns: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    needs_why: str = ""  # what the needed fields are for, in the message that asks for them
    streaming: bool = False  # served offline and streaming (a Speech NIM's `mode` tag: ofl, str)
    riva: bool = False  # also answers Riva's gRPC API, as the Speech NIMs (ASR, TTS, NMT) do
    native_backends: tuple[str, ...] = ()  # engine backends only this task takes (tensorrt_llm)
    # NeMo classes a recipe may also build as this task, which `recipe init` gives to another one by
    # default (a hybrid TDT-CTC model is a transducer first; its CTC head is this task's)
    builds_also: tuple[str, ...] = ()
    # precisions a speech task's targets may build (fp32 alone where no gate judges what it serves; the
    # encoder-decoders' variants are gated on their greedy tokens: int8 for onnxruntime only, the
    # engines' calibrated int8 needs sample inputs speech has not)
    speech_precisions: tuple[str, ...] = ("fp32",)


HYBRIDS = ("EncDecHybridRNNTCTCModel", "EncDecHybridRNNTCTCBPEModel")  # NeMo's transducers with a CTC head beside

TASKS: tuple[Task, ...] = (
    # encoders, and the decoders embedding models are made of (e5-mistral, Qwen3-Embedding: last-token pooling)
    Task("embedding", "sentence embedding", "hf",
         takes=(r"^(Bert|Roberta|XLMRoberta|DistilBert|MPNet|Electra|DebertaV2|ModernBert|NomicBert)Model$",
                r"^(Mistral|Qwen2|Qwen3|Llama)Model$"),
         module="embedding", targets="graph", modality=(("text",), ("embedding",)),
         transformer=True, assets=("tokenizer",), owns=("serving.embeddings",)),
    # cross-encoders with one label (ms-marco, bge-reranker): a score per query-passage pair
    Task("ranking", "passage ranking", "hf",
         takes=(r"^(Bert|Roberta|XLMRoberta|DistilBert|Electra|DebertaV2|ModernBert)ForSequenceClassification$",
                r"^(Qwen2|Llama)ForSequenceClassification$"),
         module="ranking", targets="graph", modality=(("text",), ("text",)),
         transformer=True, assets=("tokenizer",)),
    # GPT-2's class predates the ForCausalLM naming; nimbuild.export.families lists the families proved
    Task("text-generation", "text generation", "hf", takes=(r"ForCausalLM$", r"^GPT2LMHeadModel$"),
         module="llm", targets="llm", modality=(("text",), ("text",)),
         transformer=True, assets=("tokenizer",), native_backends=("tensorrt_llm",),
         owns=("export.texts",)),  # held text for the int4/int8 variants' perplexity gate
    Task("asr-ctc", "speech recognition", "nemo", takes=("EncDecCTCModel", "EncDecCTCModelBPE"),
         module="asr", targets="asr", modality=(("audio",), ("text",)), assets=("asr",),
         owns=("serving.modes", "serving.streaming", "export.audio"), streaming=True, riva=True,
         builds_also=HYBRIDS),
    # RNNT and TDT alike: TDT is a loss and a decoding setting of the same classes; hybrids (parakeet
    # tdt_ctc) are built as their transducer unless the recipe asks for their CTC head (task: asr-ctc)
    Task("asr-rnnt", "speech recognition", "nemo", takes=("EncDecRNNTModel", "EncDecRNNTBPEModel", *HYBRIDS),
         module="asr", targets="asr", modality=(("audio",), ("text",)), assets=("asr",),
         owns=("serving.modes", "serving.streaming", "export.audio"), streaming=True, riva=True),
    # Whisper (Hugging Face): an encoder-decoder over 30 s windows of log-mel features; streamed by re-decoding
    Task("asr-whisper", "speech recognition", "hf", takes=(r"^WhisperForConditionalGeneration$",),
         module="whisper", targets="asr", modality=(("audio",), ("text",)), transformer=True,
         assets=("tokenizer", "whisper"), owns=("serving.modes", "serving.streaming", "export.audio"),
         streaming=True, riva=True, speech_precisions=("fp32", "fp16", "int8")),
    # Canary (NeMo's multitask encoder-decoder): speech recognition, and translation into English
    Task("asr-canary", "speech recognition", "nemo", takes=("EncDecMultiTaskModel",),
         module="canary", targets="asr", modality=(("audio",), ("text",)), assets=("canary",),
         owns=("serving.modes", "serving.streaming", "export.audio"), streaming=True, riva=True,
         speech_precisions=("fp32", "fp16", "int8")),
    Task("tts", "text-to-speech", "nemo", takes=("FastPitchModel",),
         module="tts", targets="tts", modality=(("text",), ("audio",)), assets=("tts",),
         owns=("source.vocoder", "serving.voice", "export.texts"),
         needs=("source.vocoder", "serving.voice", "export.texts"),
         needs_why="the vocoder stage, the voice it speaks with, the sentences it is checked on against NeMo", riva=True),
    Task("translation", "translation", "hf", takes=(r"^MarianMTModel$",),
         module="translation", targets="translation", modality=(("text",), ("text",)),
         transformer=True, assets=("tokenizer", "translation"), owns=("serving.languages", "export.texts"),
         needs=("serving.languages", "export.texts"),
         needs_why="the language pair it serves, the sources its greedy translations are checked on against transformers",
         riva=True),
)
TASK_IDS: tuple[str, ...] = tuple(t.id for t in TASKS)
BY_ID = {t.id: t for t in TASKS}
# Every folder an engine's workspace may carry for its runtime, whatever the task
ASSET_FOLDERS: tuple[str, ...] = tuple(dict.fromkeys(a for t in TASKS for a in t.assets))


def task(task_id: str) -> Task:
    """The row of a task id, or one clear error naming the ones there are."""
    row = BY_ID.get(task_id)
    if row is None:
        raise NimbuildError(f"unknown task {task_id!r}; nimbuild knows {', '.join(TASK_IDS)}")
    return row


def tasks_owning(field: str) -> tuple[Task, ...]:
    return tuple(t for t in TASKS if field in t.owns)


def task_for_architectures(architectures: list[str]) -> Task | None:
    """The hf task whose patterns match one of config.json's architectures (the first that does)."""
    for name in architectures:
        for row in TASKS:
            if row.source == "hf" and any(re.search(pattern, name) for pattern in row.takes):
                return row
    return None


def task_for_nemo_class(model_class: str) -> Task | None:
    return next((t for t in TASKS if t.source == "nemo" and model_class in t.takes), None)
