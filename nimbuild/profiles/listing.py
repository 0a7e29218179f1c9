"""`nim_list_model_profiles` output: SYSTEM INFO then MODEL PROFILES, as current NIMs print them
(NIM for LLMs' list-model-profiles), or JSON with every fact the text shows and the reasons.

    SYSTEM INFO
    - Free GPUs:
      -  [26b9:10de] (0) NVIDIA L40S (L40S) [current utilization: 0%]
    - Non-free GPUs:
      - <None>
    MODEL PROFILES
    - Compatible with system and runnable:
      - <id> (<description>) [requires >=18 GB/gpu]
      - With LoRA support:
        - <id> (<description>)
    - Compatible with system but low memory:
      - <None>
    - Compilable to TRT-LLM using just-in-time compilation of HF models to TRTLLM engines:
      - <None>
    - Incompatible with system:
      - <id> (<description>)

nimbuild's RMIR profiles (built into an engine at first start) get a group of their own, printed
only when a manifest has them, so a NIM manifest's listing has NIM's groups and nothing else.
`explain=True` adds what NIM does not print: the selected profile, each incompatible profile's
reasons, the GPUs' compute capability and memory, the runtimes.
"""

from __future__ import annotations

import math
from typing import Any

from nimbuild.profiles.select import BUILDABLE, INCOMPATIBLE, LOW_MEMORY, RUNNABLE, Candidate, Selection, memory_needed_mib
from nimbuild.profiles.system import GPU, System

RUNNABLE_TITLE = "Compatible with system and runnable"
LORA_TITLE = "With LoRA support"
LOW_MEMORY_TITLE = "Compatible with system but low memory"
JIT_TITLE = "Compilable to TRT-LLM using just-in-time compilation of HF models to TRTLLM engines"
RMIR_TITLE = "Compatible with system, built into an engine on first start (RMIR)"
INCOMPATIBLE_TITLE = "Incompatible with system"
BUSY_PERCENT = 0  # a GPU doing any work is not free
BUSY_MEMORY_FRACTION = 0.1  # nor one with more than a tenth of its memory taken


def is_free(gpu: GPU) -> bool:
    """Free: no utilisation and at most a tenth of its memory in use (unknown counts as free)."""
    if gpu.utilization_percent is not None and gpu.utilization_percent > BUSY_PERCENT:
        return False
    if gpu.memory_free_mib is not None and gpu.memory_mib - gpu.memory_free_mib > BUSY_MEMORY_FRACTION * gpu.memory_mib:
        return False
    return True


def group_of(candidate: Candidate) -> str:
    """The listing group a profile belongs to."""
    if candidate.status == LOW_MEMORY:
        return LOW_MEMORY_TITLE
    if candidate.status == INCOMPATIBLE:
        return INCOMPATIBLE_TITLE
    if candidate.status == BUILDABLE:
        return RMIR_TITLE if candidate.profile.tags.get("type") == "rmir" else JIT_TITLE
    return RUNNABLE_TITLE


def has_lora(candidate: Candidate) -> bool:
    return candidate.profile.tags.get("feat_lora", "false").lower() == "true"


def requires_gb(candidate: Candidate) -> int | None:
    mib = memory_needed_mib(candidate.profile)
    return math.ceil(mib / 1024) if mib else None


def as_json(system: System, selection: Selection, manifest: dict | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "system": system.to_dict(),
        "free_gpus": [g.index for g in system.gpus if is_free(g)],
        "selected": selection.selected.id if selection.selected else None,
        "profiles": [
            {"id": c.profile.id, "description": c.profile.description, "tags": dict(c.profile.tags),
             "status": c.status, "group": group_of(c), "lora": has_lora(c),
             "requires_gb_per_gpu": requires_gb(c), "reasons": list(c.reasons)}
            for c in selection.candidates
        ],
    }
    if manifest:
        out["manifest"] = manifest
    if selection.warning:
        out["warning"] = selection.warning
    return out


def as_text(system: System, selection: Selection, explain: bool = False) -> str:
    return "\n".join(system_lines(system, explain) + profile_lines(selection, explain))


def system_lines(system: System, explain: bool = False) -> list[str]:
    lines = ["SYSTEM INFO"]
    for title, gpus in (("Free GPUs", [g for g in system.gpus if is_free(g)]),
                        ("Non-free GPUs", [g for g in system.gpus if not is_free(g)])):
        lines.append(f"- {title}:")
        lines += [_gpu_line(g, explain) for g in gpus] or ["  - <None>"]
    if explain:
        if not system.gpus:
            lines.append(f"- no GPU{f': {system.note}' if system.note else ''}; only CPU profiles can run")
        if system.runtimes:
            lines.append("- Runtimes: " + ", ".join(f"{k} {v}" for k, v in sorted(system.runtimes.items())))
        if system.source == "file":
            lines.append("- (described by NIMBUILD_SYSTEM, not detected)")
    return lines


def _gpu_line(g: GPU, explain: bool) -> str:
    product = f" ({g.product})" if g.product else ""
    usage = f" [current utilization: {g.utilization_percent}%]" if g.utilization_percent is not None else ""
    extra = ""
    if explain:
        free = f", {g.memory_free_mib} MiB free" if g.memory_free_mib is not None else ""
        extra = f" (compute capability {g.compute_capability}, {g.memory_mib} MiB{free})"
    return f"  -  [{g.device_id}] ({g.index}) {g.name}{product}{usage}{extra}"


def profile_lines(selection: Selection, explain: bool = False) -> list[str]:
    selected = selection.selected.id if selection.selected else None
    groups: dict[str, list[Candidate]] = {t: [] for t in (RUNNABLE_TITLE, LOW_MEMORY_TITLE, JIT_TITLE, RMIR_TITLE,
                                                          INCOMPATIBLE_TITLE)}
    for c in selection.candidates:
        groups[group_of(c)].append(c)
    lines = ["MODEL PROFILES"]
    for title, members in groups.items():
        if title == RMIR_TITLE and not members:
            continue  # nimbuild's own group: only where a manifest has RMIR profiles
        lines.append(f"- {title}:")
        plain = [c for c in members if title != RUNNABLE_TITLE or not has_lora(c)]
        lines += [_profile_line(c, "  ", selected, explain) for c in plain]
        lora = [c for c in members if title == RUNNABLE_TITLE and has_lora(c)]
        if lora:
            lines.append(f"  - {LORA_TITLE}:")
            lines += [_profile_line(c, "    ", selected, explain) for c in lora]
        if not members:
            lines.append("  - <None>")
    return lines


def _profile_line(c: Candidate, indent: str, selected: str | None, explain: bool) -> str:
    gb = requires_gb(c)
    need = f" [requires >={gb} GB/gpu]" if gb else ""
    line = f"{indent}- {c.profile.id} ({c.profile.description}){need}"
    if explain:
        line += " [selected]" if c.profile.id == selected else ""
        line += f": {'; '.join(c.reasons)}" if c.reasons and c.status != RUNNABLE else ""
    return line
