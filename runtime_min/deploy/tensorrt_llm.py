"""TensorRT-LLM engines: the engine directory runs through the TensorRT-LLM LLM API inside the
text-generation task's decoupled Python model (tasks/llm/trtllm_model.py), so the same
`/v1/completions` and `/v1/chat/completions` front end serves it."""

from __future__ import annotations

from pathlib import Path

from runtime_min.deploy.core import Core


def cores(workspace: Path, info: dict) -> list[Core]:
    return [Core(kind="tensorrt_llm", workspace=workspace, file=info.get("engine") or "engine", runner="tensorrt_llm",
                 gpu=True, python_modules=("tensorrt_llm",))]
