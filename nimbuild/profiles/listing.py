"""`nim_list_model_profiles` output: SYSTEM INFO then MODEL PROFILES in NIM's groups, or JSON."""

from __future__ import annotations

from typing import Any

from nimbuild.profiles.select import BUILDABLE, INCOMPATIBLE, RUNNABLE, Selection
from nimbuild.profiles.system import System

GROUPS = (
    (RUNNABLE, "Compatible with system and runnable"),
    (BUILDABLE, "Compatible with system, built on first start"),
    (INCOMPATIBLE, "Incompatible with system"),
)


def as_json(system: System, selection: Selection) -> dict[str, Any]:
    return {
        "system": system.to_dict(),
        "selected": selection.selected.id if selection.selected else None,
        "profiles": [
            {"id": c.profile.id, "description": c.profile.description, "tags": dict(c.profile.tags),
             "status": c.status, "reasons": list(c.reasons)}
            for c in selection.candidates
        ],
    }


def as_text(system: System, selection: Selection) -> str:
    lines = ["SYSTEM INFO"]
    if system.gpus:
        lines.append("- GPUs:")
        for g in system.gpus:
            product = f" ({g.product})" if g.product else ""
            free = f", {g.memory_free_mib} MiB free" if g.memory_free_mib is not None else ""
            lines.append(f"  - [{g.device_id}] ({g.index}) {g.name}{product}: compute capability "
                         f"{g.compute_capability}, {g.memory_mib} MiB{free}")
    else:
        lines.append(f"- no GPU{f': {system.note}' if system.note else ''}; only CPU profiles can run")
    if system.runtimes:
        lines.append("- Runtimes: " + ", ".join(f"{k} {v}" for k, v in sorted(system.runtimes.items())))
    if system.source == "file":
        lines.append("- (described by NIMBUILD_SYSTEM, not detected)")
    lines.append("MODEL PROFILES")
    selected = selection.selected.id if selection.selected else None
    for status, title in GROUPS:
        lines.append(f"- {title}:")
        members = [c for c in selection.candidates if c.status == status]
        if not members:
            lines.append("  - <None>")
        for c in members:
            mark = " [selected]" if c.profile.id == selected else ""
            reason = f": {'; '.join(c.reasons)}" if c.reasons else ""
            lines.append(f"  - {c.profile.id} ({c.profile.description}){mark}{reason}")
    return "\n".join(lines)
