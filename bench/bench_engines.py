"""The example recipe's whole build: time per step (export, each gated variant, each engine, the
RMIR), the full compile, and an unchanged recompile as a fraction of it (aim: under 5%)."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import table

REPO = Path(__file__).resolve().parents[1]
NIMBUILD = str(Path(sys.executable).parent / "nimbuild")


def _compile(out: Path) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run([NIMBUILD, "compile", str(REPO / "examples" / "minilm-embed" / "recipe.yaml"), "--out", str(out), "-v"],
                            capture_output=True, text=True, check=True)
    return time.perf_counter() - start, result.stderr + result.stdout


def main() -> str:
    out = Path(tempfile.mkdtemp(prefix="nimbuild-bench-engines-")) / "out"
    full, log = _compile(out)
    steps = [[name, float(seconds)] for name, seconds in re.findall(r"^done (.+) \(([\d.]+)s\)$", log, re.M)]
    steps += [[f"(skipped) {d}", "-"] for d in re.findall(r"^skipped (\S+):", log, re.M)]
    again, log = _compile(out)
    assert "nothing rebuilt" in log
    rows = steps + [["full compile (wall, incl. interpreter start)", full],
                    ["unchanged recompile (wall)", again], ["recompile / full", again / full]]
    return table("Compile of examples/minilm-embed/recipe.yaml, seconds", ["step", "seconds"], rows)


if __name__ == "__main__":
    print(main())
