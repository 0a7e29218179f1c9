"""One folder per task; the task table (nimbuild.tasks) says which folder serves which task. Each
folder's module implements TaskHooks: how its profile is laid out in Triton around the core network
the deploy step hands it (`models`), whether it can use a core (`refuses`), its HTTP routes
(`add_routes`, importing the web stack only when serving) and, for the Riva tasks, its gRPC
servicers (`add_servicers`)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import nimbuild
from nimbuild.errors import NimbuildError
from nimbuild.tasks import BY_ID, TASK_IDS

if TYPE_CHECKING:
    from runtime_min.deploy.config import Model

# what Python models import from nimbuild (pooling, the audio front end, the generation loop...)
SERVING = Path(nimbuild.__file__).parent / "serving"

class TaskHooks(Protocol):
    """What runtime_min asks of a task's folder (its package's module-level functions)."""

    def refuses(self, core) -> str | None:
        """Why this task cannot run on the core the deploy step chose (None: it can)."""

    def models(self, name: str, info: dict, core, workspace: Path) -> list[Model]:
        """The Triton models (configs and files) that serve the profile around its core."""

    def add_routes(self, app, served, triton, state, metrics) -> None:
        """The task's HTTP API on the FastAPI app (OpenAI-shaped, or Riva's HTTP)."""


class RivaTaskHooks(TaskHooks, Protocol):
    """Tasks that also answer Riva's gRPC API (the Speech NIMs: ASR, TTS, NMT)."""

    def add_servicers(self, server, served, triton, state) -> None:
        """Register the task's Riva servicers on the gRPC server."""


def task_module(info: dict) -> TaskHooks:
    """The runtime folder the task table gives the profile's task."""
    row = BY_ID.get(info.get("task"))
    if row is None:
        raise NimbuildError(f"runtime_min serves {', '.join(TASK_IDS)} profiles; this one is {info.get('task')!r}")
    return importlib.import_module(f"runtime_min.tasks.{row.module}")


def serving_code() -> dict[str, Path]:
    """The nimbuild.serving package, whole, as a Python model's files: every model carries the same
    code, so none can miss a module another one added (the package's contract is in its __init__)."""
    files = {"nimbuild/__init__.py": SERVING.parent / "__init__.py"}
    for source in sorted(SERVING.glob("*.py")):
        files[f"nimbuild/serving/{source.name}"] = source
    return files


def serving(info: dict) -> tuple[int, int]:
    """(max batch size, dynamic batching delay in microseconds) from the profile's serving spec."""
    spec = info.get("serving") or {}
    return max(1, int(spec.get("max_batch_size") or 1)), int((spec.get("dynamic_batching") or {}).get("max_queue_delay_us", 0))


def batch_within_export(info: dict, core) -> tuple[int, int]:
    """serving()'s batch size no larger than the export's `runtime.max_batch` (the batch its graphs
    were checked at) or what the core takes, and the delay: for the Python models whose loops run
    the core themselves (TTS, translation)."""
    batch, delay = serving(info)
    return core.batch(min(batch, int(info["runtime"].get("max_batch") or batch))), delay


def tensor_dims(shape: list) -> list[int]:
    """A recorded shape (["batch", "sequence", 384]) as Triton dims without the batch: fixed sizes kept, names -1."""
    return [d if isinstance(d, int) and d > 0 else -1 for d in shape[1:]]


def language_matches(requested: str, served: str) -> bool:
    """BCP-47 codes name the same language when their primary subtags agree and, where both give a
    region, the regions do too: `en` and `en-US` name what `en-US` serves, `de-DE` what `de` serves;
    `en-GB` is not `en-US` (case is not significant); nothing requested matches. Every front end
    (ASR, TTS and translation; HTTP and Riva) asks this."""
    wanted = requested.strip().lower().replace("_", "-").split("-", 1)
    have = served.strip().lower().replace("_", "-").split("-", 1)
    if not wanted[0]:
        return True
    return wanted[0] == have[0] and (len(wanted) == 1 or len(have) == 1 or wanted[1] == have[1])
