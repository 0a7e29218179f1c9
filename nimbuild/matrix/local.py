"""`nimbuild matrix run --local`: the cells this machine can build, as parallel processes, merged.

Each cell compiles into OUT/.cells/<cell>/ (so cells never write the same files), then the
workspaces move to OUT/profiles/ and one manifest is written: byte for byte what a single
`nimbuild compile RECIPE --out OUT` writes, since every cell computes the same ids and records.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from nimbuild.errors import NimbuildError
from nimbuild.matrix import cells as matrix
from nimbuild.profiles.manifest import MANIFEST_NAME, Manifest, load_manifest, merge_manifests
from nimbuild.util.progress import Reporter


@dataclass
class LocalRun:
    ran: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    profiles: list = field(default_factory=list)


def run_local(recipe_path: Path, out: Path, reporter: Reporter, jobs: int = 0) -> LocalRun:
    from nimbuild.compile import plan_variants
    from nimbuild.recipe import load_recipe
    from nimbuild.targets.tensorrt import why_not_buildable

    cells = matrix.expand(plan_variants(load_recipe(recipe_path)))
    result = LocalRun()
    runnable = []
    for cell in cells:
        reason = why_not_buildable(cell.compute_capability) if cell.kind == "gpu" else None
        (result.skipped.append((cell.id, reason)) if reason else runnable.append(cell))
    staging = out / ".cells"
    staging.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(jobs or os.cpu_count() or 1, len(runnable)))
    with ThreadPoolExecutor(workers) as pool:
        failures = [f for f in pool.map(lambda c: _compile_cell(recipe_path, c.id, staging / c.id, reporter), runnable) if f]
    if failures:
        raise NimbuildError("; ".join(failures))
    manifests = [(str(staging / c.id), load_manifest(staging / c.id / MANIFEST_NAME)) for c in runnable]
    merged = merge_manifests(manifests)
    root = out / "profiles"
    root.mkdir(exist_ok=True)
    for origin, manifest in manifests:
        for p in manifest.profiles:
            final = root / p.description
            shutil.rmtree(final, ignore_errors=True)
            os.replace(Path(origin) / "profiles" / p.description, final)
    live = {p.description for p in merged.profiles}
    for stale in root.iterdir():
        if stale.name not in live:
            shutil.rmtree(stale)
    Manifest(merged.profiles).save(out / MANIFEST_NAME)
    shutil.rmtree(staging, ignore_errors=True)
    result.ran, result.profiles = [c.id for c in runnable], merged.profiles
    return result


def _compile_cell(recipe_path: Path, cell: str, out: Path, reporter: Reporter) -> str | None:
    reporter.info(f"... cell {cell}")
    done = subprocess.run([sys.executable, "-m", "nimbuild", "-q", "compile", str(recipe_path), "--cell", cell,
                           "--out", str(out)], capture_output=True, text=True)
    if done.returncode:
        return f"cell {cell} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
    reporter.info(f"done cell {cell}")
    return None
