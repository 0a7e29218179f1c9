"""`nimbuild compile`: recipe -> source -> reference ONNX -> variants -> profiles + manifest.

Output layout under --out:

    profiles.yaml                      the manifest (written last, atomically)
    profiles/<description>/...         one workspace per profile

Work happens in a staging directory inside --out and is moved into place only when every
variant has been built and verified, so a failed compile leaves the previous result intact and
nothing half-made under a final name. A variant whose inputs (source digest, the recipe parts that
shape it, tool versions) are unchanged and whose files are intact is reused, not rebuilt.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from nimbuild import __version__
from nimbuild.errors import ManifestError, NimbuildError
from nimbuild.profiles.manifest import MANIFEST_NAME, Manifest, Profile, WorkspaceFile, load_manifest
from nimbuild.profiles.tags import describe, normalise_tags
from nimbuild.tasks import TASKS, task
from nimbuild.util.files import file_matches, sha256_bytes, sha256_file
from nimbuild.util.progress import Reporter

if TYPE_CHECKING:  # the recipe schema (pydantic) loads only where a recipe is read: an RMIR deploy needs none
    from nimbuild.recipe import Recipe

WORKSPACES_DIR = "profiles"
COMPILE_RECORD = "compile-record.json"  # the last compile's cost per step (_write_compile_record)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".nemo")
STAGING_PREFIX = ".nimbuild-staging-"


@dataclass(frozen=True)
class Variant:
    """One cell of the recipe's matrix: a target and a precision."""

    target_index: int
    precision: str
    tags: tuple[tuple[str, str], ...]

    @property
    def description(self) -> str:
        return describe(dict(self.tags))


@dataclass
class CompileResult:
    manifest: Manifest
    built: list[str]  # profile ids built in this run
    reused: list[str]  # profile ids whose inputs had not changed
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (description, why this machine cannot build it)
    # the compile's steps: {step, seconds, peak_rss_mib}, as COMPILE_RECORD holds them
    stages: list[dict] = field(default_factory=list)


GENERIC_PRECISIONS = ("fp32", "fp16", "int8")  # what onnxruntime runs well on any machine
ENGINE_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
# The oldest GPU generation with kernels for a precision: bf16 from Ampere, fp8 from Ada.
MIN_COMPUTE_CAPABILITY = {"bf16": "8.0", "fp8": "8.9"}


def plan_variants(recipe: Recipe) -> list[Variant]:
    """Expand targets x precisions (x compute capabilities); refuse, before any work, what this
    version cannot build."""
    variants: list[Variant] = []
    for i, target in enumerate(recipe.targets):
        for tags in _target_tags(recipe, i, target):
            variant = Variant(i, tags["precision"], tuple(normalise_tags(tags).items()))
            twin = next((v for v in variants if v.description == variant.description), None)
            if twin:
                raise NimbuildError(f"targets[{twin.target_index}] and targets[{i}] both make "
                                    f"{variant.description}; each profile must come from one target")
            variants.append(variant)
    return variants


def _target_tags(recipe: Recipe, i: int, target) -> list[dict[str, str]]:
    """A target's profiles, expanded by the rule the task table gives the recipe's task."""
    row = task(recipe.task)
    backend = getattr(target, "backend", None)
    if backend in NATIVE_BACKENDS and backend not in row.native_backends:
        owners = " or ".join(t.id for t in TASKS if backend in t.native_backends)
        raise NimbuildError(f"targets[{i}]: backend {backend} builds {owners} models; this recipe's task is {recipe.task}")
    if getattr(target, "lora", None) and row.targets != "llm":
        raise NimbuildError(f"targets[{i}].lora: LoRA adapters are for text-generation models; this recipe's task is "
                            f"{recipe.task}")
    return _TAG_RULES[row.targets](recipe, i, target)


def _graph_target_tags(recipe: Recipe, i: int, target) -> list[dict[str, str]]:
    """A task's one ONNX graph (and its precision variants) as generic, engine and RMIR profiles."""
    common = {"profile": recipe.serving.profile, "tp": "1"}
    if target.type == "generic":
        _supported(i, target, GENERIC_PRECISIONS)
        return [{"backend": target.backend, "type": "generic", "precision": p, **common} for p in target.precisions]
    if target.type == "prebuilt" and target.backend == "tensorrt_rtx":
        from nimbuild.targets.tensorrt_rtx import require_rtx

        _supported(i, target, ENGINE_PRECISIONS, target.compute_capabilities)
        version = require_rtx()
        return [{"backend": "tensorrt_rtx", "type": "prebuilt", "precision": p, "compute_capability": cc,
                 "trt_version": version, **common}
                for p in target.precisions for cc in target.compute_capabilities]
    if target.type == "prebuilt" and target.backend == "tensorrt":
        from nimbuild.targets.tensorrt import tensorrt_version, triton_container

        _supported(i, target, ENGINE_PRECISIONS, target.compute_capabilities)
        extra = {"triton_container": container} if (container := triton_container()) else {}
        if target.hardware_compatibility != "none":
            extra["hardware_compatibility"] = target.hardware_compatibility
        if target.version_compatible:
            extra["version_compatible"] = "true"
        return [{"backend": "tensorrt", "type": "prebuilt", "precision": p, "compute_capability": cc,
                 "trt_version": tensorrt_version() or "", **extra, **common}
                for p in target.precisions for cc in target.compute_capabilities]
    if target.type == "rmir":
        from nimbuild.targets.tensorrt_rtx import require_rtx

        _supported(i, target, ENGINE_PRECISIONS, [target.min_compute_capability])
        require_rtx()  # deploy builds with it; refuse archives this install could never deploy
        return [{"backend": "rmir", "type": "rmir", "precision": p, **common} for p in target.precisions]
    backend = getattr(target, "backend", target.type)
    raise NimbuildError(
        f"targets[{i}]: {target.type} targets ({backend}) are not supported by this version of nimbuild yet; "
        "remove the target to compile the rest"
    )


def _speech_target_tags(recipe: Recipe, i: int, target) -> list[dict[str, str]]:
    """Speech profiles carry Speech NIM's `mode` (ofl: whole files, str: chunked streaming) and
    `name` tags, one profile per mode; the graph is the same, the serving differs. Precisions are
    the task row's `speech_precisions`: those a gate on the served transcripts judges."""
    allowed = task(recipe.task).speech_precisions  # the variants a gate on what the task serves judges
    _supported(i, target, allowed if getattr(target, "backend", "") == "onnxruntime" else tuple(p for p in allowed if p != "int8"))
    return [{**tags, "mode": mode, "name": recipe.name}
            for tags in _graph_target_tags(recipe, i, target) for mode in recipe.serving.modes]


def _tts_target_tags(recipe: Recipe, i: int, target) -> list[dict[str, str]]:
    """Text-to-speech profiles carry Speech NIM's `name` tag; one profile serves whole and streamed
    synthesis. fp32 only: a reduced-precision spectrogram generator must be gated on what is served
    (its durations, and the vocoded audio's spectral distance), and that gate is not built yet."""
    reduced = [p for p in target.precisions if p != "fp32"]
    if reduced:
        raise NimbuildError(f"targets[{i}]: precision {', '.join(reduced)} is not built for tts profiles yet: it needs "
                            "a gate on the served audio (durations and spectral distance), which this version does not "
                            "have; build fp32")
    return [{**tags, "name": recipe.name} for tags in _graph_target_tags(recipe, i, target)]


def _translation_target_tags(recipe: Recipe, i: int, target) -> list[dict[str, str]]:
    """Translation profiles carry the `name` tag and their language pair (`src_lang`, `tgt_lang`,
    as Riva's LanguagePair names them), so one manifest can hold several pairs and selection can
    ask for one. fp32 only: a reduced-precision decoder must be gated on its translations (token
    agreement), which this version does not have."""
    _supported(i, target, ("fp32",))
    pair = recipe.serving.languages
    return [{**tags, "name": recipe.name, "src_lang": pair.source, "tgt_lang": pair.target}
            for tags in _graph_target_tags(recipe, i, target)]


def _llm_target_tags(recipe: Recipe, i: int, target) -> list[dict[str, str]]:
    """Decoder LMs: the generic KV-cache graph (fp32, or its weight-only int8 and int4 variants)
    anywhere, TensorRT-LLM engines on GPU hosts."""
    from nimbuild.targets.tensorrt_llm import LLM_PRECISIONS, tensorrt_llm_version

    profile = recipe.serving.profile
    if target.type == "generic":
        # the LoRA graph is exported in fp32 only (nimbuild.export.lora)
        _supported(i, target, ("fp32",) if target.lora else ("fp32", "int8", "int4"))
        # a LoRA target's profile is its own graph (adapters as inputs), tagged as NIM tags LoRA profiles
        lora = {"feat_lora": "true", "lora_max_rank": str(target.lora.max_rank)} if target.lora else {}
        return [{"backend": target.backend, "type": "generic", "precision": p, "profile": profile, "tp": "1", **lora}
                for p in target.precisions]
    if getattr(target, "backend", None) != "tensorrt_llm":
        raise NimbuildError(f"targets[{i}]: text-generation models are built as generic onnxruntime profiles or "
                            f"TensorRT-LLM engines (type: prebuilt, backend: tensorrt_llm), not {target.type} "
                            f"{getattr(target, 'backend', '')}".rstrip())
    from nimbuild.export.families import why_no_trtllm
    from nimbuild.sources import resolve_source
    from nimbuild.targets.tensorrt import triton_container

    config = resolve_source(recipe).config  # the family picks TensorRT-LLM's checkpoint converter
    if why := why_no_trtllm(config):
        raise NimbuildError(f"targets[{i}]: TensorRT-LLM cannot build this checkpoint: {why}")
    _supported(i, target, LLM_PRECISIONS, target.compute_capabilities)
    extra = {"triton_container": container} if (container := triton_container("trtllm-python-py3")) else {}
    return [{"llm_engine": "tensorrt_llm", "type": "prebuilt", "precision": p, "compute_capability": cc,
             "trt_version": tensorrt_llm_version() or "", "profile": profile, "tp": str(target.tp),
             "pp": str(target.pp), "feat_lora": "true" if target.lora else "false",
             "model_type": str(config["model_type"]), **extra}
            for p in target.precisions for cc in target.compute_capabilities]


# How a target expands into profiles, by the task table's `targets` rule
_TAG_RULES = {"graph": _graph_target_tags, "llm": _llm_target_tags, "asr": _speech_target_tags,
              "tts": _tts_target_tags, "translation": _translation_target_tags}
# Engine backends that build one kind of model only (the task table's `native_backends`)
NATIVE_BACKENDS = frozenset(b for t in TASKS for b in t.native_backends)


def _supported(i: int, target, precisions: tuple[str, ...], capabilities: list[str] = ()) -> None:
    missing = [p for p in target.precisions if p not in precisions]
    if missing:
        raise NimbuildError(f"targets[{i}]: precision {', '.join(missing)} is not supported for "
                            f"{getattr(target, 'backend', target.type)} by this version of nimbuild yet "
                            f"(it builds {', '.join(precisions)})")
    for precision in target.precisions:
        floor = MIN_COMPUTE_CAPABILITY.get(precision)
        too_old = [cc for cc in capabilities if floor and _cc(cc) < _cc(floor)]
        if too_old:
            raise NimbuildError(f"targets[{i}]: {precision} needs compute capability {floor} or newer; "
                                f"this target lists {', '.join(too_old)}")


def _cc(value: str) -> tuple[int, ...]:
    return tuple(int(part) for part in value.split("."))


def build_key(recipe: Recipe, variant: Variant, source_digest: str) -> str:
    """Digest of everything that shapes this variant's files; equal keys mean nothing to rebuild."""
    from importlib.metadata import version

    inputs = {
        "nimbuild": __version__,
        "code": _code_digest(),
        "source": source_digest,
        "model": recipe.name,
        "release": recipe.release,
        "task": recipe.task,
        "export": recipe.export.model_dump(mode="json"),
        "serving": recipe.serving.model_dump(mode="json"),
        "target": recipe.targets[variant.target_index].model_dump(mode="json"),
        "tags": dict(variant.tags),  # precision, compute capability and engine builder version among them
        "precision_spec": recipe.precision_spec(variant.precision).model_dump(mode="json"),
        "calibration_data": _calibration_digest(recipe, variant.precision),
        "vocoder": _vocoder_digest(recipe),
        # every library that shapes the files: a newer converter must not be skipped as "unchanged"
        "tools": {n: version(n) for n in ("torch", "transformers", "onnx", "onnxruntime", "onnxscript",
                                          "onnxconverter-common", "ml_dtypes")
                  + (("nemo_toolkit",) if recipe.source.nemo else ())},
    }
    return "sha256:" + sha256_bytes(json.dumps(inputs, sort_keys=True).encode())


def _vocoder_digest(recipe: Recipe) -> str | None:
    """A tts recipe's vocoder checkpoint is a second source: a retrained vocoder is a rebuild."""
    vocoder = recipe.source.vocoder
    if vocoder is None or isinstance(vocoder, str):
        return vocoder
    from nimbuild.sources.nemo import resolve_nemo

    return "sha256:" + resolve_nemo(vocoder.nemo, recipe.base_dir).digest()


def _calibration_file(recipe: Recipe, precision: str) -> Path | None:
    calibration = recipe.precision_spec(precision).calibration
    return recipe.resolve_path(calibration.data) if calibration and calibration.data else None


def _calibration_digest(recipe: Recipe, precision: str) -> str | None:
    """The calibration texts shape Q/DQ scales: edited texts are a rebuild, the same path or not."""
    path = _calibration_file(recipe, precision)
    return "sha256:" + sha256_file(path) if path and path.is_file() else None  # a missing file fails the build


# The parts of nimbuild that shape a profile's files; a change to them is a build input, so a
# fixed exporter is not skipped as "unchanged". The CLI, registry and selection code are not.
# Folders are hashed whole, so a module added to one is covered without editing this line (a hand
# list of files here once left out the text helpers that write values into TTS and NMT profiles).
SHAPING_CODE = ("compile.py", "recipe.py", "tasks.py", "shapes.py", "util/archive.py", "util/yamlsafe.py", "serving",
                "sources", "export", "precision", "targets", "profiles/manifest.py", "profiles/tags.py")


def shaping_files() -> list[Path]:
    """The files SHAPING_CODE names, folders expanded, in a fixed order."""
    package = Path(__file__).resolve().parent
    return sorted(f for part in SHAPING_CODE for f in ((package / part).rglob("*.py") if (package / part).is_dir()
                                                        else [package / part]))


def _code_digest() -> str:
    package = Path(__file__).resolve().parent
    entries = [f"{p.relative_to(package).as_posix()}\0{sha256_file(p)}" for p in shaping_files()]
    return sha256_bytes("\n".join(entries).encode())


def select_variants(variants: list[Variant], targets: tuple[int, ...] = (), precisions: tuple[str, ...] = ()) -> list[Variant]:
    """The subset `--target`/`--precision` ask for (all when they are empty)."""
    chosen = [v for v in variants if (not targets or v.target_index in targets)
              and (not precisions or v.precision in precisions)]
    if not chosen:
        raise NimbuildError("--target/--precision select nothing from this recipe's targets")
    return chosen


def split_buildable(variants: list[Variant]) -> tuple[list[Variant], list[tuple[str, str]]]:
    """Cells this machine can build, and the others with the reason (datacenter TensorRT needs a GPU
    of the target's compute capability: those cells run on GPU CI runners)."""
    from nimbuild.targets.tensorrt import why_not_buildable

    buildable, skipped = [], []
    for v in variants:
        tags = dict(v.tags)
        reason = None
        if tags.get("backend") == "tensorrt":
            reason = why_not_buildable(tags["compute_capability"])
        elif tags.get("llm_engine") == "tensorrt_llm":
            from nimbuild.targets.tensorrt_llm import why_not_buildable as why_not_llm

            reason = why_not_llm(tags["compute_capability"], int(tags["tp"]) * int(tags["pp"]))
        (skipped.append((v.description, reason)) if reason else buildable.append(v))
    return buildable, skipped


def compile_recipe(recipe: Recipe, out: Path, reporter: Reporter, force: bool = False,
                   targets: tuple[int, ...] = (), precisions: tuple[str, ...] = (), cell: str | None = None) -> CompileResult:
    from nimbuild.matrix import cells as matrix

    first_stage = len(reporter.stages)
    planned = plan_variants(recipe)
    chosen = matrix.select_cell(planned, cell) if cell else planned
    variants, skipped = split_buildable(select_variants(chosen, targets, precisions))
    for description, reason in skipped:
        reporter.info(f"skipped {description}: {reason}")
    from nimbuild.sources import resolve_source

    checkpoint = resolve_source(recipe)
    created_out = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with _exclusive(out):
            with reporter.step(f"digest source {checkpoint.spec}"):
                source_digest = "sha256:" + checkpoint.digest()
            keys = {v: build_key(recipe, v, source_digest) for v in variants}
            previous = _previous_profiles(out, reporter)
            todo = [v for v in variants if force or keys[v] not in previous or not _intact(out, previous[keys[v]])]
            kept = [previous[keys[v]] for v in variants if v not in todo]
            built = _build(recipe, checkpoint, todo, keys, source_digest, out, reporter) if todo else []
            manifest = Manifest(kept + [p for p, _ in built])
            _commit(out, built, manifest)
            stages = _write_compile_record(out, recipe, checkpoint, [p.id for p, _ in built], reporter.stages[first_stage:])
            if cell:  # a partial result: say which cell it is, so merge can name what is missing
                matrix.write_cell_record(out, recipe, planned, cell, skipped)
            else:
                (out / matrix.CELL_FILE).unlink(missing_ok=True)
    except BaseException:
        if created_out:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return CompileResult(manifest, built=[p.id for p, _ in built], reused=[p.id for p in kept], skipped=skipped,
                         stages=stages)


def _write_compile_record(out: Path, recipe: Recipe, checkpoint, built: list[str], steps: list) -> list[dict]:
    """What this compile cost, step by step (seconds, peak resident MiB), beside the manifest in
    COMPILE_RECORD (docs/design.md §17). Not in the manifest: two compiles of one recipe must
    give identical manifests, and memory and time differ from run to run."""
    from nimbuild.util.files import atomic_write_text

    stages = [{"step": message, "seconds": round(seconds, 2), "peak_rss_mib": None if peak is None else round(peak)}
              for message, seconds, peak in steps]
    record = {"model": recipe.name, "release": recipe.release, "source_bytes": _source_bytes(checkpoint),
              "built": built, "stages": stages}
    if built:  # an up-to-date compile keeps the record of the one that built the profiles
        atomic_write_text(out / COMPILE_RECORD, json.dumps(record, indent=1) + "\n")
    return stages


def _source_bytes(checkpoint) -> int:
    """The checkpoint's weights on disk (a .nemo archive whole): what a compile's peak is measured against."""
    path = getattr(checkpoint, "source", None) or checkpoint.path
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES)


@contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """One compile at a time per output directory."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(out / ".nimbuild.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise NimbuildError(f"{out}: another nimbuild compile is writing here; wait for it to finish") from None
    try:
        yield
    finally:
        lock.release()
        (out / ".nimbuild.lock").unlink(missing_ok=True)


def _previous_profiles(out: Path, reporter: Reporter) -> dict[str, Profile]:
    """Profiles of an earlier compile into this directory, by build key."""
    path = out / MANIFEST_NAME
    if not path.exists():
        return {}
    try:
        manifest = load_manifest(path)
    except ManifestError as e:
        reporter.info(f"note: rebuilding everything; the previous manifest is unreadable ({e})")
        return {}
    return {p.build["key"]: p for p in manifest.profiles if isinstance(p.build, dict) and p.build.get("key")}


def _intact(out: Path, profile: Profile) -> bool:
    return all(file_matches(out / f.uri, f.digest, f.size) for f in profile.files.values())


def _build(recipe: Recipe, checkpoint, todo: list[Variant], keys: dict, source_digest: str,
           out: Path, reporter: Reporter) -> list[tuple[Profile, Path]]:
    """Build each variant into the staging directory; return (profile, staged workspace) pairs."""
    from nimbuild.export import export_reference
    from nimbuild.targets.generic import make_engine_workspace, make_generic_workspace, make_rmir_workspace

    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        reference = export_reference(checkpoint, recipe, staging / "_reference", reporter)
        graphs = _precision_graphs(recipe, checkpoint, reference, {_form(recipe, v) for v in todo}, staging, reporter)
        staged, engines = [], {}
        for variant in todo:
            workspace = staging / variant.description
            graph, verification = graphs[_form(recipe, variant)]
            tags = dict(variant.tags)
            if tags["type"] == "rmir":
                target = recipe.targets[variant.target_index]
                make_rmir_workspace(recipe, checkpoint, reference, graph, variant.precision,
                                    target.min_compute_capability, workspace)
            elif tags.get("llm_engine") == "tensorrt_llm":
                from nimbuild.targets.tensorrt_llm import make_llm_engine_workspace

                with reporter.step(f"build TensorRT-LLM engine {variant.description}"):
                    engine = make_llm_engine_workspace(recipe, checkpoint, reference, variant, workspace)
                verification = {**verification, "engine": engine}
            elif tags["backend"] in ("tensorrt_rtx", "tensorrt"):
                with reporter.step(f"build {tags['backend']} engine {variant.description}"):
                    engine = make_engine_workspace(recipe, checkpoint, reference, graph, variant, workspace, engines)
                verification = {**verification, "engine": engine}
            elif "lora" in verification:  # the runtime reads the graph's LoRA inputs from model_info
                lora_reference = dataclasses.replace(
                    reference, runtime_info={**reference.runtime_info, "lora": verification["lora"]["spec"]})
                make_generic_workspace(recipe, checkpoint, lora_reference, graph, variant.precision, workspace)
            else:
                make_generic_workspace(recipe, checkpoint, reference, graph, variant.precision, workspace)
            profile = _profile_for(recipe, variant, workspace, keys[variant], source_digest, reference, verification)
            staged.append((profile, workspace))
        return staged
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _form(recipe: Recipe, variant: Variant) -> str:
    """Which graph a variant is built from (int8 is dynamic for onnxruntime, Q/DQ for engines,
    weight-only for text generation)."""
    from nimbuild.precision.variants import form_for

    tags = dict(variant.tags)
    if tags.get("feat_lora") == "true" and tags["type"] == "generic":  # the LoRA graph (nimbuild.export.lora)
        return f"lora-{variant.target_index}"
    if variant.precision == "fp32" or "llm_engine" in tags:  # TensorRT-LLM quantises from the checkpoint itself
        return "fp32"
    return form_for(variant.precision, tags["backend"], weight_only=task(recipe.task).targets == "llm")


def _precision_graphs(recipe: Recipe, checkpoint, reference, forms: set[str], staging: Path,
                      reporter: Reporter) -> dict[str, tuple[Path, dict]]:
    """{form: (graph, verification record)}: the reference, and each variant that passed its gate
    (or that the recipe asked to build ungated)."""
    from nimbuild.precision.variants import calibration_batches, make_gated

    graphs = {"fp32": (reference.files[0], {"parity": reference.parity.summary()})}
    for form in sorted(f for f in forms if f.startswith("lora-")):
        from nimbuild.export.lora import export_lora

        lora = recipe.targets[int(form.split("-")[1])].lora
        path, spec, record = export_lora(checkpoint, recipe, lora, staging / "_variants" / form, reporter)
        graphs[form] = (path, {"parity": reference.parity.summary(), "lora": {"spec": spec, "parity": record}})
    for form in sorted(f for f in forms - {"fp32"} if not f.startswith("lora-")):
        precision = form.split("-")[0]
        spec = recipe.precision_spec(precision)
        with reporter.step(f"make and gate the {form} variant"):
            data = _calibration_file(recipe, precision)
            calibration = calibration_batches(reference, checkpoint, spec, data) if "qdq" in form else []
            graphs[form] = make_gated(reference, form, spec, staging / "_variants" / form, calibration)
        reporter.debug(f"{form}: {graphs[form][1]}")
    return graphs


def _profile_for(recipe: Recipe, variant: Variant, workspace: Path, key: str, source_digest: str, reference,
                 verification: dict) -> Profile:
    files = {}
    for path in sorted(p for p in workspace.rglob("*") if p.is_file()):
        rel = path.relative_to(workspace).as_posix()
        files[rel] = WorkspaceFile(
            uri=f"{WORKSPACES_DIR}/{variant.description}/{rel}",
            digest="sha256:" + sha256_file(path),
            size=path.stat().st_size,
        )
    build: dict[str, Any] = {
        "key": key,
        "source": {"spec": recipe.source.hf or recipe.source.nemo, "digest": source_digest},
        "builder": reference.builder,
        **verification,
    }
    tags = dict(variant.tags)
    requires = None
    if tags.get("type") == "prebuilt":
        # the compute_capability tag names exactly what the engine runs on
        requires = {"gpus": int(tags.get("tp", "1")) * int(tags.get("pp", "1"))}
    elif tags.get("type") == "rmir":
        requires = {"min_compute_capability": recipe.targets[variant.target_index].min_compute_capability, "gpus": 1}
    if task(recipe.task).targets == "llm":  # weights + KV cache: a GPU's need is what selection judges
        from nimbuild.export.llm import serving_memory_mib

        on_gpu = tags.get("llm_engine") == "tensorrt_llm"  # fp16 cache there; the onnxruntime graph's is fp32
        need = serving_memory_mib(workspace, reference.runtime_info, 2 if on_gpu else 4)
        requires = {**(requires or {}), ("gpu_memory_mib" if on_gpu else "memory_mib"): need}
    return Profile.create(recipe.name, recipe.release, tags, files, requires=requires, build=build)


def _commit(out: Path, staged: list[tuple[Profile, Path]], manifest: Manifest) -> None:
    """Swap staged workspaces into place, write the manifest, then drop stale workspaces and staging."""
    root = out / WORKSPACES_DIR
    root.mkdir(exist_ok=True)
    trash = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX + "old-", dir=out))
    try:
        for profile, workspace in staged:
            final = root / profile.description
            if final.exists():
                os.replace(final, trash / profile.description)
            os.replace(workspace, final)
        manifest.save(out / MANIFEST_NAME)
        live = {p.description for p in manifest.profiles}
        for stale in root.iterdir():
            if stale.name not in live:
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    finally:
        shutil.rmtree(trash, ignore_errors=True)
        for leftover in out.glob(STAGING_PREFIX + "*"):
            shutil.rmtree(leftover, ignore_errors=True)
