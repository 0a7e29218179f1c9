"""One folder per task. Each task module says how its profile is laid out in Triton around the
core network the deploy step hands it (`models`), whether it can use a core (`refuses`), and adds
its HTTP routes (`add_routes`, importing the web stack only when serving)."""

from __future__ import annotations

import importlib
from pathlib import Path

import nimbuild
from nimbuild.errors import NimbuildError

# the helpers Python models import (pooling, audio front end, generation loop) are copied from here
NIMBUILD = Path(nimbuild.__file__).parent

TASKS = {"embedding": "embedding", "text-generation": "llm", "asr-ctc": "asr", "asr-rnnt": "asr", "tts": "tts",
         "translation": "translation"}


def task_module(info: dict):
    task = info.get("task")
    if task not in TASKS:
        raise NimbuildError(f"runtime_min serves {', '.join(TASKS)} profiles; this one is {task!r}")
    return importlib.import_module(f"runtime_min.tasks.{TASKS[task]}")


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
