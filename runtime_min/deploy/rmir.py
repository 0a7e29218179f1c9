"""RMIR profiles: at first start the archive becomes an engine for the detected GPU, cached under
NIM_CACHE_PATH by archive digest, compute capability, builder and builder version (a second start
reuses it), and is then deployed as the prebuilt kind its builder makes: datacenter TensorRT
engines on Triton's TensorRT backend, TensorRT-RTX engines through its runtime in Python models.

The engine build is nimbuild's own (`nimbuild rmir deploy` is the same call), imported only here,
only when an RMIR is deployed: the rest of the runtime never loads build code.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from nimbuild.errors import NimbuildError

log = logging.getLogger("runtime_min")


ARCHIVE = "model.rmir"


def build(workspace: Path, digest: str | None, compute_capability: str, cache_root: Path) -> tuple[Path, str]:
    """(directory holding model.plan and its model_info.json, the prebuilt kind it now is).
    `digest`: the archive's, as the fetch just verified it."""
    from nimbuild.targets.rmir import deploy

    archive = workspace / ARCHIVE
    if not archive.is_file():
        raise NimbuildError(f"{workspace}: the RMIR profile has no {ARCHIVE}")
    start = time.perf_counter()
    engine, hit = deploy(archive, cache_root, compute_capability, digest)
    record = json.loads((engine.parent / "deploy.json").read_text())
    log.info("RMIR %s engine for compute capability %s with %s %s (%s, %.1f s)", "reused the" if hit else "built an",
             compute_capability, record["builder"], record["version"], engine.parent, time.perf_counter() - start)
    return engine.parent, record["builder"]
