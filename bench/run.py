"""`make bench`: run every bench/bench_*.py, each in a fresh process (so no benchmark's environment,
imports or threads leak into the next), print its tables, and save them under bench/results/:
latest.txt (the tables of a full run) and latest.json (per benchmark: ok, when, seconds, its
tables, and the figures of those that return them; a run of some benchmarks updates just theirs),
then the charts of latest.json as PNGs in docs/charts/ (bench/plots.py). A benchmark that fails
says why in one line and the run goes on; the exit status is then 1, as it is when no chart could
be written.

    python bench/run.py [NAME ...]          names match by substring (e.g. `runtime asr`); bench_scale
                                            runs only when named (`make bench-scale`)
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CHARTS = HERE.parent / "docs" / "charts"  # committed: the benchmarks page shows them
# run only when named (`make bench-scale`): they take longer than the rest together
ON_REQUEST = {"bench_scale"}


def run_one(name: str, out: Path) -> None:
    """In the child: import the benchmark, run it, write {text, data} as JSON to `out`."""
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent / "tests"))  # the test harness's servers (docker-registry, free ports)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import importlib

    result = importlib.import_module(name).main()
    text, data = result if isinstance(result, tuple) else (result, None)
    out.write_text(json.dumps({"text": text, "data": data}, default=str))


def main(selected: list[str]) -> int:
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    names = [n for n in names if any(s in n for s in selected)] if selected else \
        [n for n in names if n not in ON_REQUEST]
    header = f"nimbuild benchmarks: {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    report, results, failed = [header, stamp], {}, []
    print("\n".join(report), flush=True)
    RESULTS.mkdir(exist_ok=True)
    for name in names:
        start = time.perf_counter()
        out = RESULTS / f".{name}.json"
        out.unlink(missing_ok=True)
        child = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", name, str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - start
        if child.returncode == 0 and out.exists():
            produced = json.loads(out.read_text())
            results[name] = {"ok": True, "when": stamp, "seconds": round(seconds, 1), **produced}
            block = f"\n[{name}] ({seconds:.0f}s)\n{produced['text']}"
        else:
            why = _last_line(child.stderr) or f"exit status {child.returncode}"
            results[name] = {"ok": False, "when": stamp, "seconds": round(seconds, 1), "error": why}
            failed.append(name)
            block = f"\n[{name}] failed after {seconds:.0f}s: {why}"
        out.unlink(missing_ok=True)
        print(block, flush=True)
        report.append(block)
    if selected:  # a partial run updates its benchmarks' entries and keeps the others' (each says when)
        results = {**_earlier_results(), **results}
    else:
        (RESULTS / "latest.txt").write_text("\n".join(report) + "\n")
    (RESULTS / "latest.json").write_text(json.dumps({"machine": header, "when": stamp, "benchmarks": results},
                                                    indent=1) + "\n")
    charted = _charts()
    print(f"\n{charted}", flush=True)
    if not charted.startswith("charts:"):
        failed.append("charts")
    if failed:
        print(f"\n{len(failed)} benchmark(s) failed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


def _charts() -> str:
    """bench/plots.py on latest.json, in the peers' environment (matplotlib lives there), writing
    docs/charts/*.png; one line saying which it wrote, or why none."""
    sys.path.insert(0, str(HERE))
    from common import peer_python

    try:
        python = peer_python()
    except SystemExit as missing:  # the one place that knows where the peers' environment is
        return f"charts not written: {missing}"
    done = subprocess.run([str(python), str(HERE / "plots.py"), str(RESULTS / "latest.json"), str(CHARTS)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return f"charts not written: {_last_line(done.stderr) or f'exit status {done.returncode}'}"
    written = json.loads(done.stdout)["written"]
    return f"charts: {', '.join(written) or 'none had figures in this run'} in {CHARTS}"


def _earlier_results() -> dict:
    try:
        return json.loads((RESULTS / "latest.json").read_text())["benchmarks"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        run_one(sys.argv[2], Path(sys.argv[3]))
    else:
        sys.exit(main(sys.argv[1:]))
