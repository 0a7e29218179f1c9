"""The deploy step: profile -> Triton model repository (docs/design.md §8).

The profile kind decides how the core network runs (one module each: onnx, tensorrt, tensorrt_rtx,
rmir, tensorrt_llm, each offering Cores in order of preference); the task decides the Python pre-
and post-processing models around it (runtime_min/tasks/<task>/). `plan` picks the first Core the
Triton in use can run and the task accepts, or says in one line what is missing; `write_store`
writes the repository. The same writer serves `runtime_min serve` and `create-model-store`, and a
repository names no path outside itself: graphs, engines and the helpers the Python models import
are linked or copied into it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nimbuild.errors import NimbuildError
from nimbuild.profiles.manifest import Profile
from runtime_min.deploy.core import Core

MODEL_INFO = "model_info.json"


@dataclass
class Deployment:
    """What was written: the model the front end calls, its model_info, the core and the models."""

    name: str
    info: dict
    core: Core
    workspace: Path  # where the served files live (a deployed RMIR's engine slot, or the profile's workspace)
    models: list[str]


def kind_of(profile: Profile) -> str:
    tags = profile.tags
    if tags.get("type") == "rmir":
        return "rmir"
    return tags.get("llm_engine") or tags.get("backend") or tags.get("type", "")


def prepare(profile: Profile, workspace: Path, cache_root: Path, compute_capability: str | None) -> tuple[Path, str, dict]:
    """(served workspace, kind, model_info). An RMIR is built into an engine for this GPU first
    (cached: a second start reuses it) and is then served as the prebuilt kind its builder made."""
    kind = kind_of(profile)
    if kind == "rmir":
        from runtime_min.deploy import rmir

        if compute_capability is None:
            raise NimbuildError(f"profile {profile.description}: an RMIR becomes an engine for this machine's GPU; "
                                "there is none")
        archive = profile.files.get(rmir.ARCHIVE)
        workspace, kind = rmir.build(workspace, archive.digest if archive else None, compute_capability, cache_root)
    return workspace, kind, read_info(workspace)


def read_info(workspace: Path) -> dict:
    path = workspace / MODEL_INFO
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise NimbuildError(f"{path}: cannot read the profile's model_info.json: {e}") from None
    if not isinstance(info, dict) or not isinstance(info.get("inputs"), list):
        raise NimbuildError(f"{path}: not a nimbuild model_info.json (no inputs)")
    return info


def cores(kind: str, workspace: Path, info: dict, gpu: bool) -> list[Core]:
    from runtime_min.deploy import onnx, tensorrt, tensorrt_llm, tensorrt_rtx

    if kind == "onnxruntime":
        return onnx.cores(workspace, info, gpu)
    makers = {"tensorrt": tensorrt.cores, "tensorrt_rtx": tensorrt_rtx.cores, "tensorrt_llm": tensorrt_llm.cores}
    if kind not in makers:
        raise NimbuildError(f"runtime_min cannot serve {kind!r} profiles (it serves onnxruntime, tensorrt, "
                            "tensorrt_rtx, rmir and tensorrt_llm)")
    return makers[kind](workspace, info)


def plan(kind: str, workspace: Path, info: dict, servers: list, gpu: bool) -> tuple:
    """(server, Core): the kind's most preferred Core that the task accepts and some server can run
    (servers tried in the order given: the bundled one first). Native backends come first, so a
    datacenter engine runs on Triton's TensorRT backend wherever a tritonserver has it. Before the
    profile is fetched `info` is {} and only the backends are judged. One line says what is missing."""
    from runtime_min.tasks import task_module

    task = task_module(info) if info.get("task") else None
    usable = [c for c in cores(kind, workspace, info, gpu) if not (task and task.refuses(c))]
    for core in usable:
        for server in servers:
            if core.backends <= server.backends:
                return server, core
    have = "; ".join(s.describe() for s in servers) or "no tritonserver on PATH and nvidia-pytriton is not installed"
    wanted = " or ".join(f"{c.describe()}, which needs Triton's {' and '.join(sorted(c.backends))} backends"
                         for c in usable)
    raise NimbuildError(f"cannot serve this {kind} profile: it runs as {wanted}; found {have} "
                        "(NGC's Triton container has the native backends)")


def write_store(name: str, info: dict, core: Core, workspace: Path, store: Path, portable: bool = True) -> list[str]:
    """Write every model of the profile into `store` (created, or emptied of those models), staged
    in a temporary directory beside it (not in it: Triton would take it for a model) and moved in
    only when complete. `portable`: config.write_models."""
    from runtime_min.deploy.config import write_models
    from runtime_min.tasks import task_module

    models = task_module(info).models(name, info, core, workspace)
    store.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{store.name}-staging-", dir=store.resolve().parent))
    try:
        write_models(models, staging, portable)
        for model in models:
            final = store / model.name
            if final.exists():
                shutil.rmtree(final)
            (staging / model.name).replace(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [m.name for m in models]
