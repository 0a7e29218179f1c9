"""Prebuilt datacenter TensorRT engines: Triton's native TensorRT backend (`platform:
"tensorrt_plan"`), on the GPU, with the engine's optimisation profile; the task's Python pre- and
post-processing models sit around it in an ensemble, as Riva's repositories do. Where the Triton in
use has no TensorRT backend (the bundled one), the task's Python models run the engine with the
`tensorrt` runtime instead, as they run TensorRT-RTX engines."""

from __future__ import annotations

from pathlib import Path

from runtime_min.deploy.core import Core


def cores(workspace: Path, info: dict) -> list[Core]:
    common = dict(kind="tensorrt", workspace=workspace, file=info.get("engine") or "model.plan", gpu=True,
                  max_batch=profile_max_batch(info))
    return [Core(native="tensorrt", **common),
            Core(runner="tensorrt", python_modules=("tensorrt", "cuda.bindings"), **common)]


def profile_max_batch(info: dict) -> int | None:
    """The largest batch the engine's optimisation profile takes (the first input's first dimension)."""
    for spec in info.get("inputs") or []:
        shapes = list((spec.get("shapes") or {}).values())
        if shapes:
            return int(shapes[0][2])
    return None
