"""Profile selection (docs/design.md §5): one pure function of profiles, system and environment.

The CLI (`nim_list_model_profiles`, `nimbuild profiles select`) and runtime_min call the same
`select_profile`, so what a listing marks as selected is what the runtime starts.

Order (each rule's source is in the README's selection section):
1. NIM_MODEL_PROFILE (an id, a unique id prefix, or a description) chooses exactly one profile; one
   judged incompatible is refused, unless NIM_MANIFEST_ALLOW_UNSAFE=1 (then chosen, with a warning).
2. NIM_TAGS_SELECTOR (k=v,k=v) keeps only profiles whose tags match; with LoRA enabled
   (NIM_PEFT_SOURCE set), profiles without feat_lora=true are dropped.
3. Profiles the system cannot run are dropped, each with its reasons: GPU identity (`gpu`,
   `gpu_device`, non-LLM NIMs' `product_name_regex` and `key`), compute capability, count,
   memory (those that fail on memory alone are "compatible but low memory"), runtime versions.
   Buildable profiles (RMIR, TensorRT-LLM `trtllm_buildable`) are compatible when a builder, the
   GPUs, their count and memory fit.
4. Preference: prebuilt for this exact GPU > prebuilt for this compute capability > built here
   (RMIR, buildable TensorRT-LLM) > generic on the GPU (vLLM, SGLang, ONNX) > CPU; within one,
   TensorRT and TensorRT-LLM before other engines; then profiles without LoRA unless LoRA is
   enabled; then the lowest precision the hardware runs well; then the preferred latency/throughput
   profile (NIMBUILD_PREFER_PROFILE, default throughput); then tp x pp closest to the GPU count;
   ties broken by id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Mapping, Sequence

from nimbuild.errors import NimbuildError, SelectionError
from nimbuild.profiles import gpus as catalogue
from nimbuild.profiles.builders import rmir_builder
from nimbuild.profiles.manifest import Profile
from nimbuild.profiles.system import GPU, System, cc_tuple

PROFILE_ENV = "NIM_MODEL_PROFILE"
SELECTOR_ENV = "NIM_TAGS_SELECTOR"
PREFER_ENV = "NIMBUILD_PREFER_PROFILE"
UNSAFE_ENV = "NIM_MANIFEST_ALLOW_UNSAFE"
PEFT_ENV = "NIM_PEFT_SOURCE"

RUNNABLE, BUILDABLE, LOW_MEMORY, INCOMPATIBLE = "runnable", "buildable", "low-memory", "incompatible"
# Backends that run without a GPU; everything else (TensorRT engines, TRT-LLM, vLLM, RMIR) needs one.
# NIM's non-LLM containers tag their generic profiles `backend: onnx`.
CPU_BACKENDS = {"onnxruntime", "onnx"}
TENSORRT_ENGINES = {"tensorrt", "tensorrt_llm", "tensorrt_rtx", "trtllm"}
# Lowest compute capability each precision runs on (tensor-core support).
PRECISION_MIN_CC = {"bf16": (8, 0), "fp8": (8, 9), "fp4": (10, 0), "nvfp4": (10, 0), "int4": (7, 5)}
# Preference ranks, lower is better. On a GPU, lower precision is faster. On a CPU, onnxruntime
# has fast int8 kernels but emulates fp16/bf16, so fp32 beats them there; a text-generation profile's
# weight-only int4 decodes faster still but rounds more, so it comes after int8 (each is gated).
GPU_PRECISION_RANK = {"nvfp4": 0, "fp4": 0, "fp8": 1, "int4": 2, "int8": 2, "w4a16": 2, "fp16": 3, "bf16": 3,
                      "mixed": 3, "fp32": 4}
CPU_PRECISION_RANK = {"int8": 0, "int4": 1, "fp32": 2, "fp16": 3, "bf16": 4}
TIER_NAMES = ("prebuilt for this GPU", "prebuilt for this compute capability", "built on this GPU",
              "generic on the GPU", "CPU")


@dataclass
class Candidate:
    profile: Profile
    status: str = RUNNABLE  # runnable | buildable | low-memory | incompatible
    reasons: list[str] = field(default_factory=list)

    @property
    def compatible(self) -> bool:
        return self.status in (RUNNABLE, BUILDABLE)


@dataclass
class Selection:
    selected: Profile | None
    candidates: list[Candidate]  # every profile, in preference order among the compatible ones
    why_none: str | None = None  # set when nothing was selected
    warning: str | None = None  # a forced choice NIM_MANIFEST_ALLOW_UNSAFE let through

    def require(self) -> Profile:
        if self.selected is None:
            raise SelectionError(self.why_none or "no profile selected")
        return self.selected


def select_profile(profiles: Sequence[Profile], system: System, env: Mapping[str, str]) -> Selection:
    candidates = _judged(profiles, system)
    _apply_selector(candidates, env.get(SELECTOR_ENV, ""))
    lora = bool(env.get(PEFT_ENV, "").strip())
    if lora:
        _require_lora(candidates)
    prefer = (env.get(PREFER_ENV) or "throughput").strip().lower()
    if prefer not in ("throughput", "latency"):
        raise NimbuildError(f"{PREFER_ENV}={prefer!r}: expected throughput or latency")
    compatible = sorted((c for c in candidates if c.compatible), key=lambda c: _preference(c.profile, system, prefer, lora))
    ordered = compatible + sorted((c for c in candidates if not c.compatible),
                                  key=lambda c: (c.status != LOW_MEMORY, c.profile.id))

    requested = env.get(PROFILE_ENV, "").strip()
    if requested:
        chosen = find_candidate(requested, candidates)
        if not chosen.compatible:
            why = (f"{PROFILE_ENV}={requested} names {chosen.profile.id} ({chosen.profile.description}), "
                   f"which this system cannot run: {'; '.join(chosen.reasons)}")
            if env.get(UNSAFE_ENV, "").strip().lower() not in ("1", "true", "yes"):
                raise SelectionError(f"{why} (set {UNSAFE_ENV}=1 to start it anyway)")
            return Selection(chosen.profile, ordered, warning=f"{why}; starting it because {UNSAFE_ENV} is set")
        return Selection(chosen.profile, ordered)
    if not compatible:
        return Selection(None, ordered, why_none=_why_none(ordered, system))
    return Selection(compatible[0].profile, ordered)


# --- compatibility --------------------------------------------------------------------------------

def needs_gpu(profile: Profile) -> bool:
    backend = profile.tags.get("backend") or profile.tags.get("llm_engine") or ""
    return backend not in CPU_BACKENDS or profile.tags.get("type") in ("prebuilt", "rmir")


def buildable(profile: Profile) -> bool:
    """Made into an engine on the target: an RMIR, or NIM's TensorRT-LLM profiles built from HF weights."""
    return profile.tags.get("type") == "rmir" or profile.tags.get("trtllm_buildable", "").lower() == "true"


def _judged(profiles: Sequence[Profile], system: System) -> list[Candidate]:
    """Each profile's candidate. A verdict depends on a profile's tags and requires alone, and a
    large manifest repeats a few hundred of those across its models and releases, so each distinct
    pair is judged once (a third of a 10,000-profile listing's selection time otherwise)."""
    verdicts: dict[tuple, tuple[str, list[str]]] = {}
    candidates = []
    for profile in profiles:
        try:
            key: tuple | None = (tuple(profile.tags.items()), tuple(profile.requires.items()))
            verdict = verdicts.get(key)
        except TypeError:  # a requires value that is a mapping or a list: judged on its own
            key, verdict = None, None
        if verdict is None:
            candidate = _judge(profile, system)
            if key is not None:
                verdicts[key] = (candidate.status, candidate.reasons)
        else:
            candidate = Candidate(profile, verdict[0], list(verdict[1]))
        candidates.append(candidate)
    return candidates


def _judge(profile: Profile, system: System) -> Candidate:
    candidate = Candidate(profile, BUILDABLE if buildable(profile) else RUNNABLE)
    reasons = candidate.reasons
    tags = profile.tags
    if needs_gpu(profile):
        if not system.gpus:
            backend = tags.get("backend") or tags.get("llm_engine") or tags.get("type")
            reasons.append(f"needs a GPU (backend {backend}); this system has none")
        else:
            reasons.extend(_gpu_reasons(profile, system))
    elif system.gpus:
        reasons.extend(_precision_reasons(tags.get("precision", ""), system.gpus[0]))
    elif tags.get("precision") in ("fp8", "fp4", "nvfp4"):
        reasons.append(f"precision {tags['precision']} needs a GPU; this system has none")
    needed = gpus_needed(profile)
    if needs_gpu(profile) and system.gpus and len(system.gpus) < needed:
        reasons.append(f"needs {needed} GPUs ({_parallelism(profile)}); this system has {len(system.gpus)}")
    fits = not reasons
    memory = memory_needed_mib(profile)
    if memory and system.gpus and needs_gpu(profile):
        smallest = min(system.gpus[:needed] or system.gpus, key=lambda g: g.memory_mib)
        if smallest.memory_mib < memory:
            reasons.append(f"needs {memory} MiB of GPU memory; GPU {smallest.index} has {smallest.memory_mib} MiB")
    if reasons:  # short of memory alone is NIM's "compatible with system but low memory"
        candidate.status = LOW_MEMORY if fits else INCOMPATIBLE
    return candidate


def memory_needed_mib(profile: Profile) -> int | None:
    """GPU memory a profile records it needs, per GPU: nimbuild's requires.gpu_memory_mib."""
    value = profile.requires.get("gpu_memory_mib")
    return int(value) if isinstance(value, int) or str(value).isdigit() else None


def _gpu_reasons(profile: Profile, system: System) -> list[str]:
    tags, requires = profile.tags, profile.requires
    gpu = system.gpus[0]  # profiles run on identical GPUs; the first one stands for the node
    reasons = []
    if tags.get("gpu_device") or tags.get("gpu"):
        if not _for_this_gpu(profile, gpu):
            wanted = " / ".join(v for v in (tags.get("gpu"), tags.get("gpu_device")) if v)
            reasons.append(f"built for GPU {wanted}; this system has {gpu.name} ({gpu.device_id})")
    reasons.extend(_nim_identity_reasons(profile, gpu, system))
    engine_ccs = [c.strip() for c in tags.get("compute_capability", "").split(",") if c.strip()]
    if engine_ccs and not _cc_allowed(gpu.cc, engine_ccs, tags):
        reasons.append(f"compute capability {gpu.compute_capability} is not among the engine's {', '.join(engine_ccs)}")
    minimum = requires.get("min_compute_capability")
    if minimum and gpu.cc < cc_tuple(str(minimum)):
        reasons.append(f"needs compute capability {minimum} or newer; this GPU has {gpu.compute_capability}")
    reasons.extend(_precision_reasons(tags.get("precision", ""), gpu))
    reasons.extend(_runtime_reasons(profile, system))
    return reasons


def _nim_identity_reasons(profile: Profile, gpu: GPU, system: System) -> list[str]:
    """Non-LLM NIMs name their engines' GPU by `product_name_regex` and `key` (_nim_gpu_match); a
    key's TensorRT version must also be the installed one, where the system says which that is."""
    tags = profile.tags
    _, why = _nim_gpu_match(tags, gpu)
    reasons = [why] if why else []
    key = parse_key(tags.get("key", ""))
    installed = (system.runtimes or {}).get("tensorrt")
    if key and installed and _version(installed)[:3] != _version(key[1])[:3]:
        reasons.append(f"key {tags['key']}: the engine was built with TensorRT {key[1]}; {installed} is installed")
    return reasons


def _nim_gpu_match(tags: Mapping[str, str], gpu: GPU) -> tuple[bool | None, str | None]:
    """(whether the tags name this GPU, why not), or (None, None) when they name no GPU.
    `product_name_regex` (a Python regular expression, look-aheads included, searched in the
    GPU's product name as NVIDIA's device plugin labels it, e.g. NVIDIA-A10G) governs where given;
    else `key`'s GPU part (GPU, TensorRT version, CUDA major: NVIDIA-A10G_10.0.1_12)."""
    pattern = tags.get("product_name_regex")
    if pattern:
        try:
            found = re.search(pattern, gpu.product_label) is not None
        except re.error as e:
            return False, f"product_name_regex {pattern!r} is not a valid regular expression ({e})"
        return (True, None) if found else \
            (False, f"product_name_regex {pattern!r} does not match this GPU ({gpu.product_label})")
    key = parse_key(tags.get("key", ""))
    if key:
        if key[0].lower() == gpu.product_label.lower():
            return True, None
        return False, f"key {tags['key']} is for {key[0]}; this GPU is {gpu.product_label}"
    return None, None


def parse_key(key: str) -> tuple[str, str, str] | None:
    """NVIDIA-A10G_10.0.1_12 -> (NVIDIA-A10G, 10.0.1, 12); a generic key (`onnx`) names no GPU."""
    parts = key.split("_")
    if len(parts) == 3 and parts[1][:1].isdigit() and parts[2].isdigit():
        return parts[0], parts[1], parts[2]
    return None


def _cc_allowed(cc: tuple[int, int], engine_ccs: list[str], tags: Mapping[str, str]) -> bool:
    if f"{cc[0]}.{cc[1]}" in engine_ccs:
        return True
    # TensorRT's hardware-compatible engines ("ampere_plus") run on any GPU from Ampere on.
    return tags.get("hardware_compatibility", "none") == "ampere_plus" and cc >= (8, 0)


def _precision_reasons(precision: str, gpu: GPU) -> list[str]:
    minimum = PRECISION_MIN_CC.get(precision.lower())
    if minimum and gpu.cc < minimum:
        return [f"precision {precision} needs compute capability {minimum[0]}.{minimum[1]}+; "
                f"this GPU has {gpu.compute_capability}"]
    return []


def _runtime_reasons(profile: Profile, system: System) -> list[str]:
    """An engine runs only on the runtime version it was built with (unless version-compatible);
    an RMIR needs the builder that turns it into one."""
    if profile.tags.get("type") == "rmir":
        _, why = rmir_builder(system.gpus[0].compute_capability, system.runtimes)
        return [why] if why else []
    built = profile.tags.get("trt_version")
    backend = profile.tags.get("backend") or profile.tags.get("llm_engine", "")  # TensorRT-LLM profiles name their engine
    if not built or system.runtimes is None or profile.tags.get("type") != "prebuilt":
        return []
    installed = system.runtimes.get(backend)
    if installed is None:
        return [f"engine needs {backend} {built}, which is not installed"]
    if profile.tags.get("version_compatible", "false") == "true":
        ok = installed.split(".")[0] == built.split(".")[0] and _version(installed) >= _version(built)
    else:
        ok = _version(installed)[:3] == _version(built)[:3]
    return [] if ok else [f"engine was built with {backend} {built}; {installed} is installed"]


@lru_cache(maxsize=4096)  # a manifest names a handful of versions, 10,000 times over
def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def gpus_needed(profile: Profile) -> int:
    tags = profile.tags
    if tags.get("number_of_gpus", "").isdigit():
        return int(tags["number_of_gpus"])
    if str(profile.requires.get("gpus", "")).isdigit():
        return int(profile.requires["gpus"])
    return _int(tags.get("tp"), 1) * _int(tags.get("pp"), 1)


def _parallelism(profile: Profile) -> str:
    return f"tp={profile.tags.get('tp', '1')} x pp={profile.tags.get('pp', '1')}"


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _for_this_gpu(profile: Profile, gpu: GPU) -> bool:
    tags = profile.tags
    device = tags.get("gpu_device", "").lower()
    if device and device == gpu.device_id:
        return True
    name = tags.get("gpu")
    if name and catalogue.name_matches(name, gpu.name, gpu.product):
        return True
    return _nim_gpu_match(tags, gpu)[0] is True


def _require_lora(candidates: list[Candidate]) -> None:
    """NIM with LoRA enabled (NIM_PEFT_SOURCE) runs only profiles that serve adapters."""
    for c in candidates:
        if c.profile.tags.get("feat_lora", "false").lower() != "true":
            c.status = INCOMPATIBLE
            c.reasons.append(f"LoRA is enabled ({PEFT_ENV} is set) and this profile does not support LoRA "
                             "(feat_lora is not true)")


# --- overrides ------------------------------------------------------------------------------------

def parse_selector(text: str) -> dict[str, str]:
    """`key=value,key=value`: every entry one key, one `=`, one value (an empty entry, `a=` or
    `a==b` is a typo that would otherwise select against a tag nobody meant)."""
    wanted = {}
    if not text.strip():
        return wanted
    for part in (p.strip() for p in text.split(",")):
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep or not key or not value or "=" in value:
            raise NimbuildError(f"{SELECTOR_ENV}={text!r}: {repr(part) if part else 'an empty entry'} is not key=value "
                                "(expected e.g. precision=fp16,profile=latency)")
        wanted[key] = value
    return wanted


def _apply_selector(candidates: list[Candidate], text: str) -> None:
    wanted = parse_selector(text)
    for c in candidates:
        misses = []
        for key, value in wanted.items():
            have = c.profile.tags.get(key)
            if have is None:
                misses.append(f"has no tag '{key}'")
            elif have.lower() != value.lower():
                misses.append(f"{key}={have}")
        if misses:
            c.status = INCOMPATIBLE
            c.reasons.append(f"does not match {SELECTOR_ENV} ({', '.join(misses)})")


def find_candidate(requested: str, candidates: list[Candidate]) -> Candidate:
    """By id, description, or a unique id prefix of at least 4 characters."""
    exact = [c for c in candidates if requested in (c.profile.id, c.profile.description)]
    if len(exact) == 1:
        return exact[0]
    prefix = [c for c in candidates if len(requested) >= 4 and c.profile.id.startswith(requested)]
    matches = exact or prefix
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise SelectionError(f"{requested!r} is ambiguous: it matches "
                             + ", ".join(f"{c.profile.id[:12]} ({c.profile.description})" for c in matches))
    known = "; ".join(f"{c.profile.id} ({c.profile.description})" for c in candidates) or "none"
    raise SelectionError(f"{requested!r} matches no profile id or description. Profiles: {known}")


# --- preference -----------------------------------------------------------------------------------

def tier(profile: Profile, system: System) -> int:
    """An index of TIER_NAMES."""
    if buildable(profile):
        return 2
    if not needs_gpu(profile):
        return 4
    if system.gpus and _for_this_gpu(profile, system.gpus[0]):
        return 0
    if profile.tags.get("compute_capability") or profile.tags.get("type") == "prebuilt":
        return 1
    return 3


def engine(profile: Profile) -> str:
    return (profile.tags.get("llm_engine") or profile.tags.get("backend") or "").lower()


def _preference(profile: Profile, system: System, prefer: str, lora: bool = False) -> tuple:
    ranks = GPU_PRECISION_RANK if system.gpus else CPU_PRECISION_RANK
    precision = ranks.get(profile.tags.get("precision", "").lower(), len(ranks) + 1)
    mode = 0 if profile.tags.get("profile", prefer).lower() == prefer else 1
    spread = abs(max(len(system.gpus), 1) - gpus_needed(profile))
    tensorrt = 0 if engine(profile) in TENSORRT_ENGINES else 1
    adapters = 0 if lora or profile.tags.get("feat_lora", "false").lower() != "true" else 1
    return (tier(profile, system), tensorrt, adapters, precision, mode, spread, profile.id)


def _why_none(ordered: list[Candidate], system: System) -> str:
    gpus = ", ".join(f"{g.name} ({g.compute_capability})" for g in system.gpus) or "no GPU"
    lines = [f"no profile is compatible with this system ({gpus}):"]
    lines += [f"  {c.profile.id[:12]} {c.profile.description}: {'; '.join(c.reasons)}" for c in ordered]
    return "\n".join(lines)
