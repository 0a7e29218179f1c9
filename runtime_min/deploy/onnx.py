"""Generic profiles (backend onnxruntime): the verified ONNX graph itself.

Triton's native onnxruntime backend runs it where the tritonserver in use has that backend (NGC's
Triton container); otherwise the task's Python models run it with onnxruntime in-process (the only
choice with the tritonserver that nvidia-pytriton bundles, which has the Python backend alone).
"""

from __future__ import annotations

from pathlib import Path

from runtime_min.deploy.core import Core


def cores(workspace: Path, info: dict, gpu: bool) -> list[Core]:
    graph = info.get("graph") or "model.onnx"
    companions = [p.name for p in sorted(workspace.glob(Path(graph).name + ".data"))]
    common = dict(kind="onnxruntime", workspace=workspace, file=graph, companions=companions)
    return [Core(native="onnxruntime", gpu=gpu, **common),
            Core(runner="onnxruntime", python_modules=("onnxruntime",), **common)]
