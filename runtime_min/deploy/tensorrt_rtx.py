"""Prebuilt TensorRT-RTX engines: no Triton backend runs them, so the task's Python models run the
engine with TensorRT-RTX's runtime (runners.EngineRunner) on the model instance's GPU."""

from __future__ import annotations

from pathlib import Path

from runtime_min.deploy.core import Core
from runtime_min.deploy.tensorrt import profile_max_batch


def cores(workspace: Path, info: dict) -> list[Core]:
    return [Core(kind="tensorrt_rtx", workspace=workspace, file=info.get("engine") or "model.plan",
                 runner="tensorrt_rtx", gpu=True, python_modules=("tensorrt_rtx", "cuda.bindings"),
                 max_batch=profile_max_batch(info))]
