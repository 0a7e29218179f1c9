"""`nimbuild matrix run --local` against a sequential `nimbuild compile` of the same recipe, wall time."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import table

REPO = Path(__file__).resolve().parents[1]
NIMBUILD = str(Path(sys.executable).parent / "nimbuild")
RECIPE = str(REPO / "examples" / "minilm-embed" / "recipe.yaml")


def _timed(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([NIMBUILD, "-q", *args], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> str:
    tmp = Path(tempfile.mkdtemp(prefix="nimbuild-bench-matrix-"))
    sequential = _timed("compile", RECIPE, "--out", str(tmp / "single"))
    local = _timed("matrix", "run", RECIPE, "--local", "--out", str(tmp / "matrix"))
    same = (tmp / "single" / "profiles.yaml").read_bytes() == (tmp / "matrix" / "profiles.yaml").read_bytes()
    rows = [["sequential compile", sequential, 1.0], ["matrix run --local", local, local / sequential]]
    return table(f"Example recipe, wall seconds (one CPU cell runs here; the GPU cell is skipped); "
                 f"manifests identical: {same}", ["how", "seconds", "x sequential"], rows)


if __name__ == "__main__":
    print(main())
