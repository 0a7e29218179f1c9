"""Recipes: what to build and how (docs/design.md §3). Loaded, validated, never holding results.

Validation errors name the file, the line and the field, and say what was expected:

    recipes/x.yaml:12: export.opset: expected an integer, got 'seventeen'
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from nimbuild.errors import RecipeError, shown
from nimbuild.shapes import MAX_BATCH, DimRange, Dims
from nimbuild.tasks import BY_ID, TASK_IDS, TASKS, tasks_owning
from nimbuild.util.files import read_user_text
from nimbuild.util.yamlsafe import YamlProblem, load_with_lines

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
# Recipe fields that only some tasks take (the task table's `owns`)
OWNED_FIELDS = tuple(dict.fromkeys(f for t in TASKS for f in t.owns))
# Compute capabilities TensorRT-RTX can build for ahead of time (PLATFORM.md).
RTX_COMPUTE_CAPABILITIES = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"

# int4: text generation's weight-only 4-bit (MatMulNBits); int8 is weight-only there too (WeightOnly)
Precision = Literal["fp32", "fp16", "bf16", "int8", "fp8", "int4"]


def _cc_string(value: Any) -> Any:
    """Accept 8.9 as well as "8.9": YAML reads an unquoted capability as a float."""
    if isinstance(value, float):
        return f"{value:.1f}"
    return value


ComputeCapability = Annotated[str, BeforeValidator(_cc_string), Field(pattern=r"^\d{1,2}\.\d$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VocoderSource(_Strict):
    """tts: a neural vocoder's checkpoint (a NeMo HifiGanModel .nemo), relative to the recipe."""

    nemo: str = Field(min_length=1)


class Source(_Strict):
    hf: str | None = None
    nemo: str | None = None
    # tts: the stage that turns the spectrogram generator's mel spectrograms into audio: Griffin-Lim
    # (no weights), or a neural vocoder checkpoint
    vocoder: Union[Literal["griffin-lim"], VocoderSource, None] = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "Source":
        if (self.hf is None) == (self.nemo is None):
            raise ValueError("give exactly one of 'hf' (directory or hf://org/name@revision) or 'nemo'")
        return self


class Parity(_Strict):
    """How closely the reference ONNX must reproduce the source framework."""

    # finite: an infinite tolerance passes everything, and NaN compares false with every error
    atol: float = Field(1e-4, ge=0, allow_inf_nan=False)
    rtol: float = Field(1e-3, ge=0, allow_inf_nan=False)
    cosine_min: float = Field(0.9999, ge=-1, le=1, allow_inf_nan=False)


class Export(_Strict):
    opset: int = Field(18, ge=13, le=23)
    inputs: dict[str, Dims] = Field(min_length=1)
    parity: Parity = Parity()
    # speech: recordings (relative to the recipe) the front end is checked on against NeMo's
    audio: list[str] = Field(default_factory=list)
    # tts: sentences the graph's mel spectrograms and durations are checked on against NeMo's;
    # translation: sources whose greedy translations are checked on against transformers.generate
    texts: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(default_factory=list, max_length=256)

    @field_validator("inputs")
    @classmethod
    def _dims_present(cls, inputs: dict[str, Dims]) -> dict[str, Dims]:
        for name, dims in inputs.items():
            if not dims:
                raise ValueError(f"input '{name}' lists no dimensions")
        return inputs


class Gate(_Strict):
    cosine_min: float | None = Field(None, ge=-1, le=1, allow_inf_nan=False)
    max_abs: float | None = Field(None, ge=0, allow_inf_nan=False)
    # encoder-decoder speech (Whisper, Canary): the share of the fp32 graph's greedy tokens the variant
    # serves the same, on the parity audio
    tokens_min: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    # text generation's weight-only int4/int8: how far the variant's perplexity on held text may be
    # from the source's, relative, either way (0.05: within 5%)
    perplexity_delta_max: float | None = Field(None, ge=0, le=100, allow_inf_nan=False)
    # false: build the variant without evaluating it (for one this machine cannot run); the profile
    # records that its gate did not run. Never implied: a variant that cannot be evaluated is refused.
    evaluate: bool = True


class Calibration(_Strict):
    samples: int = Field(64, ge=1, le=1 << 20)
    data: Path | None = None  # texts, one sample per line, relative to the recipe; else seeded synthetic


class WeightOnly(_Strict):
    """text-generation int4/int8: weights quantised in blocks along the input axis, activations left
    in fp32 (onnxruntime's MatMulNBits and its quantizer, nimbuild.precision.weight_only)."""

    block_size: Literal[16, 32, 64, 128, 256] = 32
    # rtn: round to nearest with a scale per block; hqq: half-quadratic, scales and zero points fitted
    algorithm: Literal["rtn", "hqq"] = "rtn"
    # onnxruntime's accuracy_level: 4 quantises activations to int8 inside the kernel (onnxruntime-genai's
    # CPU choice); 0 computes in fp32, more exact but slow for int8 (onnxruntime 1.32 on the 76M Llama:
    # int8 at 0.11x fp32's decode rate, 2.0x at level 4; bench_weight_only). The gate judges either.
    accuracy_level: Literal[0, 1, 2, 3, 4] = 4


class PrecisionSpec(_Strict):
    gate: Gate | None = None
    calibration: Calibration | None = None
    weight_only: WeightOnly | None = None


class Lora(_Strict):
    """text-generation: a LoRA-capable onnxruntime graph, adapters as inputs beside the base
    weights (nimbuild.serving.lora). `targets` are the decoder layers' linear modules adapters may
    touch, `max_rank` the largest rank served (smaller ones are padded), `slots` how many adapters
    one batch can mix (more are swapped in as they are asked for)."""

    max_rank: int = Field(ge=1, le=256)
    targets: list[str] = Field(min_length=1, max_length=16)
    slots: int = Field(4, ge=1, le=64)

    @field_validator("targets")
    @classmethod
    def _names(cls, targets: list[str]) -> list[str]:
        bad = [t for t in targets if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", t)]
        if bad or len(set(targets)) != len(targets):
            raise ValueError(f"module names, each once (as PEFT's target_modules name them: q_proj, v_proj); got {targets}")
        return targets


class GenericTarget(_Strict):
    type: Literal["generic"]
    backend: Literal["onnxruntime"] = "onnxruntime"
    precisions: list[Precision] = Field(min_length=1)
    lora: Lora | None = None  # text-generation only: the profile takes LoRA adapters


class PrebuiltTarget(_Strict):
    type: Literal["prebuilt"]
    backend: Literal["tensorrt", "tensorrt_rtx", "tensorrt_llm"]
    compute_capabilities: list[ComputeCapability] = Field(min_length=1)
    precisions: list[Precision] = Field(min_length=1)
    # tensorrt_llm only: tensor and pipeline parallelism, and whether the engine takes LoRA adapters
    tp: int = Field(1, ge=1, le=1024)
    pp: int = Field(1, ge=1, le=1024)
    lora: bool = False
    # datacenter TensorRT only: what the engine may run on, and how it is built
    hardware_compatibility: Literal["none", "ampere_plus", "same_compute_capability"] = "none"
    version_compatible: bool = False
    optimization_level: int | None = Field(None, ge=0, le=5)
    timing_cache: str | None = None  # a file, loaded if present and saved after each build

    @model_validator(mode="after")
    def _rtx_targets(self) -> "PrebuiltTarget":
        if self.backend == "tensorrt_rtx":
            bad = [cc for cc in self.compute_capabilities if cc not in RTX_COMPUTE_CAPABILITIES]
            if bad:
                raise ValueError(
                    f"TensorRT-RTX cannot build for compute capability {', '.join(bad)}; "
                    f"it builds for {', '.join(RTX_COMPUTE_CAPABILITIES)}"
                )
            tuned = [k for k in ("hardware_compatibility", "version_compatible", "optimization_level", "timing_cache")
                     if k in self.model_fields_set]
            if tuned:
                raise ValueError(f"{', '.join(tuned)} apply to backend tensorrt, not tensorrt_rtx")
        parallel = [k for k in ("tp", "pp", "lora") if k in self.model_fields_set]
        if parallel and self.backend != "tensorrt_llm":
            raise ValueError(f"{', '.join(parallel)} apply to backend tensorrt_llm, not {self.backend}")
        return self


class RmirTarget(_Strict):
    type: Literal["rmir"]
    min_compute_capability: ComputeCapability = "7.5"
    precisions: list[Precision] = Field(min_length=1)


Target = Annotated[Union[GenericTarget, PrebuiltTarget, RmirTarget], Field(discriminator="type")]


class DynamicBatching(_Strict):
    max_queue_delay_us: int = Field(0, ge=0, le=60_000_000)  # a minute


class Streaming(_Strict):
    """Speech `str` profiles: audio arrives in chunks; a partial transcript follows each chunk."""

    chunk_ms: int = Field(400, ge=40, le=10_000)


class Voice(_Strict):
    """tts: the voice a profile speaks with, named as Riva names voices: `<name>.<subvoice>`
    (GetRivaSynthesisConfig's `voice_name` and `subvoices`, which Riva's talk.py joins)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    subvoice: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    language_code: str = Field("en-US", pattern=r"^[a-z]{2,3}(-[A-Z]{2})?$")


class Languages(_Strict):
    """translation: the language pair a profile serves, as BCP-47 codes (`en`, `de-DE`); the export
    checks it against the tokenizer's source_lang and target_lang where the checkpoint records them."""

    source: str = Field(pattern=r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$")
    target: str = Field(pattern=r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$")


class Embeddings(_Strict):
    """embedding: what NIM's embedding API takes beyond text. `prompts` override the prefixes the
    checkpoint's sentence-transformers config gives each input_type (`query: `, `passage: ` for
    E5); `dimensions` declares the model Matryoshka-trained, so a request may ask for fewer
    dimensions than its width (cut and renormalised)."""

    prompts: dict[Literal["query", "passage"], str] | None = None
    dimensions: bool = False


class Serving(_Strict):
    max_batch_size: int = Field(8, ge=0, le=MAX_BATCH)
    dynamic_batching: DynamicBatching | None = None
    profile: Literal["throughput", "latency"] = "throughput"
    # speech only: offline (whole files) and/or streaming (chunks in, partial transcripts out)
    modes: list[Literal["ofl", "str"]] = Field(default_factory=lambda: ["ofl"], min_length=1)
    streaming: Streaming = Streaming()
    voice: Voice | None = None  # tts only
    languages: Languages | None = None  # translation only
    embeddings: Embeddings | None = None  # embedding only

    def spec_for(self, task: str) -> dict:
        """What a profile records of its serving; the speech settings only for speech profiles, so
        other profiles' bytes (and ids) do not carry fields that mean nothing to them."""
        others = {f.split(".")[1] for f in OWNED_FIELDS if f.startswith("serving.") and f not in BY_ID[task].owns}
        # a task's own optional section, unset, is left out too: profiles built before it existed keep their bytes
        unset = {f.split(".")[1] for f in BY_ID[task].owns if f.startswith("serving.")
                 and getattr(self, f.split(".")[1], None) is None}
        return self.model_dump(mode="json", exclude=others | unset)


class Recipe(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    release: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
    source: Source
    task: Literal[TASK_IDS]  # a row of the task table (nimbuild.tasks)
    export: Export
    precisions: dict[Precision, PrecisionSpec | None] = Field(min_length=1)
    targets: list[Target] = Field(min_length=1)
    serving: Serving = Serving()

    # Where the recipe was read from; relative paths resolve against its directory.
    # Not part of the schema: set by load_recipe.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @field_validator("precisions")
    @classmethod
    def _fp32_is_reference(cls, precisions: dict) -> dict:
        if "fp32" not in precisions:
            raise ValueError("must include fp32: it is the reference every variant is checked against")
        return precisions

    @field_validator("targets")
    @classmethod
    def _precisions_declared(cls, targets: list, info: ValidationInfo) -> list:
        declared = info.data.get("precisions") or {}
        for i, target in enumerate(targets):
            missing = [p for p in target.precisions if p not in declared]
            if missing and declared:
                raise ValueError(
                    f"targets[{i}] uses precision {', '.join(missing)}, which is not declared under 'precisions'"
                )
        return targets

    @model_validator(mode="after")
    def _task_fields(self) -> "Recipe":
        """The task table's rules: the source kind a task builds, the fields only some tasks take,
        and those a task cannot do without."""
        row = BY_ID[self.task]
        if (row.source == "nemo") != (self.source.nemo is not None):
            nemo = _and([t.id for t in TASKS if t.source == "nemo"])
            raise ValueError(f"tasks {nemo} build NeMo checkpoints (source.nemo), and NeMo checkpoints "
                             f"are built as one of them; this recipe has task {self.task} and source "
                             f"{'nemo' if self.source.nemo else 'hf'}")
        stray: dict[tuple, list[str]] = {}
        for field in OWNED_FIELDS:
            if field not in row.owns and self._given(field):
                stray.setdefault(tasks_owning(field), []).append(field)
        if stray:
            raise ValueError("; ".join(
                f"{', '.join(fields)} apply to {' or '.join(dict.fromkeys(t.title for t in owners))} recipes "
                f"(task: {' or '.join(t.id for t in owners)}), not {self.task}" for owners, fields in stray.items()))
        missing = [field for field in row.needs if not self._given(field)]
        if missing:
            raise ValueError(f"a {self.task} recipe needs {', '.join(missing)} ({row.needs_why})")
        if len(set(self.serving.modes)) != len(self.serving.modes):
            raise ValueError("serving.modes lists a mode twice")
        for precision, spec in self.precisions.items():
            if spec and spec.weight_only and (row.targets != "llm" or precision not in ("int4", "int8")):
                raise ValueError(f"precisions.{precision}.weight_only: weight-only quantisation is text generation's "
                                 f"int4 and int8 (this recipe: task {self.task}, precision {precision})")
            if spec and spec.weight_only and spec.weight_only.algorithm == "hqq" and precision != "int4":
                raise ValueError(f"precisions.{precision}.weight_only.algorithm: hqq quantises to 4 bits; use rtn for int8")
        return self

    def _given(self, field: str) -> bool:
        """Whether the recipe sets a field (`serving.voice`) to something: written, and not empty."""
        section, name = field.split(".")
        part = getattr(self, section)
        return name in part.model_fields_set and getattr(part, name) not in (None, [])

    def precision_spec(self, precision: str) -> PrecisionSpec:
        return self.precisions.get(precision) or PrecisionSpec()

    def resolve_path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    text = read_user_text(path, "recipe", RecipeError)
    return parse_recipe(text, filename=str(path), base_dir=path.resolve().parent)


def parse_recipe(text: str, filename: str = "<recipe>", base_dir: Path | None = None) -> Recipe:
    try:
        data, lines = load_with_lines(text)
    except YamlProblem as e:
        where = f"{filename}:{e.line}" if e.line else filename
        raise RecipeError(f"{where}: {e.message}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{filename}:1: expected a mapping with name, release, source, task, export, precisions, targets")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(_describe_errors(e, data, lines, filename)) from None
    return recipe.model_copy(update={"base_dir": base_dir or Path.cwd()})


def _describe_errors(error: ValidationError, data: Any, lines: dict, filename: str) -> str:
    """One line per problem (the first few), each with file, line and field."""
    messages = []
    for err in error.errors(include_url=False)[:5]:
        path = _data_path(err["loc"], data)
        line = _line_for(path, lines)
        field = _dotted(path) or "(top level)"
        messages.append(f"{filename}:{line}: {field}: {_explain(err, path, data)}")
    more = error.error_count() - len(messages)
    if more > 0:
        messages.append(f"... and {more} more problem(s)")
    return "\n".join(messages)


def _data_path(loc: tuple, data: Any) -> tuple:
    """Drop the parts of a pydantic location that are not in the document (union tags, validators)."""
    path: list = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            path.append(part)
        elif isinstance(node, dict) and isinstance(part, str) and part not in node:
            # a missing required field, or a union tag: keep a missing field's name for the message
            if part in _all_field_names():
                path.append(part)
                break
    return tuple(path)


def _line_for(path: tuple, lines: dict) -> int:
    for cut in range(len(path), -1, -1):
        if path[:cut] in lines:
            return lines[path[:cut]]
    return 1


def _dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{shown(part)}" if out else shown(part))
    return out


def _explain(err: dict, path: tuple, data: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        key = path[-1] if path else err["loc"][-1]
        allowed = _allowed_keys(path[:-1], data)
        hint = ""
        if allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (expected one of: {', '.join(sorted(allowed))})"
        return f"unknown key '{shown(key)}'{hint}"
    if kind == "missing":
        return "required field is missing"
    if kind == "union_tag_invalid":
        return f"unknown type {err['ctx']['tag']!r} (expected {err['ctx']['expected_tags']})"
    if kind == "string_type" and isinstance(err.get("input"), (int, float)):
        return f"expected a string, got the number {err['input']!r} (quote it: \"{err['input']}\")"
    got = err.get("input")
    got_text = f", got {got!r}" if not isinstance(got, (dict, list)) else ""
    message = err["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    elif message.startswith("Input should be"):
        message = "expected" + message[len("Input should be"):]
    return f"{message}{got_text}"


def _allowed_keys(parent: tuple, data: Any) -> list[str]:
    """The field names of the schema object at `parent`, following the document's own values."""
    model: Any = Recipe
    node = data
    for part in parent:
        node = node[part]
        model = _field_type(model, part, node)
        if model is None:
            return []
    model = _unwrap(model, node)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [n for n in model.model_fields if n != "base_dir"]
    return []


def _field_type(model: Any, part: Any, node: Any) -> Any:
    model = _unwrap(model, node)
    if isinstance(model, type) and issubclass(model, BaseModel):
        field = model.model_fields.get(part)
        return field.annotation if field else None
    args = typing.get_args(model)
    origin = typing.get_origin(model)
    if origin in (list, tuple) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


def _unwrap(model: Any, node: Any) -> Any:
    """Strip Annotated/Optional; pick the union member whose `type` literal matches the node."""
    while True:
        origin = typing.get_origin(model)
        if origin is Annotated:
            model = typing.get_args(model)[0]
        elif origin in (Union, types.UnionType):
            members = [m for m in typing.get_args(model) if m is not type(None)]
            chosen = members[0] if len(members) == 1 else None
            for member in members:
                t = getattr(member, "model_fields", {}).get("type")
                if t is not None and isinstance(node, dict) and node.get("type") in typing.get_args(t.annotation):
                    chosen = member
            if chosen is None:
                return None
            model = chosen
        else:
            return model


_FIELD_NAMES: set[str] | None = None


def _all_field_names() -> set[str]:
    global _FIELD_NAMES
    if _FIELD_NAMES is None:
        names: set[str] = set()
        for cls in (Recipe, Source, Export, Parity, Gate, Calibration, PrecisionSpec, GenericTarget,
                    PrebuiltTarget, RmirTarget, Serving, Streaming, DynamicBatching, DimRange):
            names.update(cls.model_fields)
        _FIELD_NAMES = names
    return _FIELD_NAMES

