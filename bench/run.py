"""`make bench`: run every bench/bench_*.py and print its tables; also saved under bench/results/."""

from __future__ import annotations

import importlib
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the test harness's servers (docker-registry, free ports)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(selected: list[str]) -> None:
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    names = [n for n in names if not selected or any(s in n for s in selected)]
    header = f"nimbuild benchmarks: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    report = [header, time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())]
    print("\n".join(report), flush=True)
    for name in names:
        start = time.perf_counter()
        text = importlib.import_module(name).main()
        block = f"\n[{name}] ({time.perf_counter() - start:.0f}s)\n{text}"
        print(block, flush=True)
        report.append(block)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / "latest.txt").write_text("\n".join(report) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
