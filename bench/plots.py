"""Charts of a `make bench` run (bench/results/latest.json) as PNGs, with matplotlib, which lives in
the bench's peers environment (bench/.venv-peers) rather than the project's.

    python plots.py LATEST_JSON OUT_DIR

One chart per question the benchmarks page (docs/benchmarks.md) answers with it; a chart whose benchmark has no figures in the
run (it failed, or was not run) is left as it was, and the names of those written are printed."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display here, and none wanted
    benchmarks = json.loads(Path(sys.argv[1]).read_text())["benchmarks"]
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    figures = {name: entry.get("data") for name, entry in benchmarks.items() if entry.get("ok") and entry.get("data")}
    written = [name for name, chart in CHARTS.items() if chart(figures, out / f"{name}.png")]
    print(json.dumps({"written": written}))


def peer_ratios(figures: dict, path: Path) -> bool:
    """runtime_min's rate over each peer's, side by side in one run (1.0: even)."""
    bars = []
    if "bench_peer_embeddings" in figures:
        for row in figures["bench_peer_embeddings"]["rows"]:
            bars.append((f"embeddings\nfastembed\nN={row['concurrency']}", row["ratio"]))
            if "ratio_infinity" in row:
                bars.append((f"embeddings\ninfinity-emb\nN={row['concurrency']}", row["ratio_infinity"]))
    if "bench_peer_nmt" in figures:
        for n, ratio in figures["bench_peer_nmt"]["ratio_served_vs_ctranslate2"].items():
            bars.append((f"translation\nCTranslate2\nN={n}", ratio))
    if "bench_peer_llm" in figures:
        for n, ratio in figures["bench_peer_llm"]["llama-76m"]["ratio_served_vs_genai"].items():
            bars.append((f"76M Llama\nort-genai\nN={n}", ratio))
        for n, ratio in figures["bench_peer_llm"]["llama-76m"].get("ratio_served_vs_vllm", {}).items():
            bars.append((f"76M Llama\nvLLM server\nN={n}", ratio))
    speech = figures.get("bench_peer_asr") or {}
    for kind, label in (("ctc", "speech CTC"), ("transducer", "speech RNNT")):
        for n, ratio in speech.get(kind, {}).get("ratio_served_vs_sherpa_served", {}).items():
            bars.append((f"{label}\nsherpa-onnx\nN={n}", ratio))
    if not bars:
        return False
    figure, axes = _axes(f"runtime_min / peer, same model and work ({len(bars)} ratios)", width=max(8, len(bars)))
    axes.bar([b[0] for b in bars], [b[1] for b in bars], color="#76b900")
    axes.tick_params(axis="x", labelsize=8)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_ylabel("runtime_min rate / peer rate")
    for i, (_, value) in enumerate(bars):
        axes.annotate(f"{value:.2f}x", (i, value), ha="center", va="bottom")
    return _save(figure, path)


def translation_sides(figures: dict, path: Path) -> bool:
    """Where the translation gap lies: the served path, Triton directly, the loop, CTranslate2."""
    data = figures.get("bench_peer_nmt")
    if not data:
        return False
    return _sides(data["per_s"], "nmt-en-de translations/s by path (greedy, 2 threads)", "translations/s", path)


def generation_sides(figures: dict, path: Path) -> bool:
    """Where the generation gap lies on the 76M Llama: served, the loop in process, onnxruntime-genai."""
    data = (figures.get("bench_peer_llm") or {}).get("llama-76m")
    if not data:
        return False
    names = {"served": "runtime_min served", "vLLM served": "vLLM served", "own loop": "runtime_min's loop in process",
             "onnxruntime-genai": "onnxruntime-genai in process"}
    rates = {label: {n: row["decode"] for n, row in data[side].items()} for side, label in names.items() if side in data}
    return _sides(rates, "76M Llama decode tokens/s by path (fp32, greedy, 2 threads)", "decode tokens/s", path)


def speech_sides(figures: dict, path: Path) -> bool:
    """Where the speech gap lies on the CTC model: both servers, then both engines in process."""
    data = (figures.get("bench_peer_asr") or {}).get("ctc")
    if not data:
        return False
    return _sides(data["rtfx"], "asr-digits RTFX by path (CTC greedy, 2 threads)", "RTFX", path, log=False)


def load_generators(figures: dict, path: Path) -> bool:
    """The same server and requests, measured by aiperf and by the standard-library client: what a
    heavier load generator takes from the two cores it shares with the server."""
    data = figures.get("bench_aiperf")
    if not data:
        return False
    rates = {client: {case: data[case][client]["request_throughput"] for case in data} for client in ("aiperf", "http.client")}
    cpu = {client: [data[case][client]["client_cpu_ms"] for case in data] for client in rates}
    figure, axes = _axes("runtime_min measured by two load generators (same payloads, same server)")
    width = 0.4
    for k, client in enumerate(rates):
        xs = [i + k * width for i in range(len(data))]
        axes.bar(xs, list(rates[client].values()), width, label=f"{client} (label: its CPU ms per request)")
        for x, value, spent in zip(xs, rates[client].values(), cpu[client]):
            axes.annotate(f"{spent:.0f}" if spent >= 1 else f"{spent:.1f}", (x, value), ha="center", va="bottom", fontsize=8)
    axes.set_xticks([i + width / 2 for i in range(len(data))], [case.replace(" c=", "\nc=") for case in data])
    axes.set_yscale("log")
    axes.set_ylabel("requests/s (log)")
    axes.legend()
    return _save(figure, path)


def _sides(rates: dict[str, dict], title: str, unit: str, path: Path, log: bool = True) -> bool:
    """Grouped bars: one group per size, one bar per side (`rates[side][size]`); a log scale where
    the sides differ by orders of magnitude, linear (from zero) where they do not."""
    sides = list(rates)
    sizes = list(rates[sides[0]])
    figure, axes = _axes(title)
    width = 0.8 / len(sides)
    for k, side in enumerate(sides):
        axes.bar([i + k * width for i in range(len(sizes))], [rates[side][n] for n in sizes], width, label=side)
    axes.set_xticks([i + width * (len(sides) - 1) / 2 for i in range(len(sizes))],
                    [f"{n} client(s) / batch {n}" for n in sizes])
    if log:
        axes.set_yscale("log")
    axes.set_ylabel(f"{unit} (log)" if log else unit)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(len(sides), 3), fontsize=8)
    return _save(figure, path)


def embedding_latency(figures: dict, path: Path) -> bool:
    """Served embeddings: throughput and latency against concurrency."""
    data = figures.get("bench_runtime")
    if not data or not data.get("embeddings"):
        return False
    rows = data["embeddings"]
    figure, axes = _axes("MiniLM embeddings through runtime_min: latency against concurrency")
    x = _lines(axes, rows, "concurrency", {"p50_ms": "p50 ms", "p99_ms": "p99 ms"})
    axes.set_xscale("log", base=2)
    axes.set_xlabel("concurrent clients")
    axes.set_ylabel("ms per request")
    rate = axes.twinx()
    rate.plot(x, [r["served_per_s"] for r in rows], marker="s", color="#76b900", label="embeddings/s")
    rate.set_ylabel("embeddings/s")
    axes.legend(loc="upper left")
    rate.legend(loc="lower right")
    return _save(figure, path)


def streaming_p99(figures: dict, path: Path) -> bool:
    """ASR streams paced in real time: p99 final latency against the number of streams."""
    data = figures.get("bench_streaming")
    if not data or not data.get("levels"):
        return False
    levels = data["levels"]
    figure, axes = _axes(f"asr-digits Riva streaming: largest N with p99 under 1 s = {data['sustained']}")
    _lines(axes, levels, "streams", {"p99": "p99", "p50": "p50"})
    axes.axhline(1000, color="red", linewidth=0.8, linestyle="--", label="1 s")
    axes.set_xlabel("concurrent 10 s streams")
    axes.set_ylabel("final transcript after the last message (ms)")
    axes.legend()
    return _save(figure, path)


def _lines(axes, rows: list[dict], x: str, series: dict[str, str]) -> list:
    """One line per key of `series` (labelled by its value) over the rows' `x`; the x values."""
    xs = [r[x] for r in rows]
    for key, label in series.items():
        axes.plot(xs, [r[key] for r in rows], marker="o", label=label)
    return xs


def _axes(title: str, width: float = 8):
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(width, 4.5), dpi=100)
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    return figure, axes


def _save(figure, path: Path) -> bool:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


CHARTS = {"peer_ratios": peer_ratios, "translation_sides": translation_sides, "generation_sides": generation_sides,
          "speech_sides": speech_sides, "load_generators": load_generators,
          "embedding_latency": embedding_latency, "streaming_p99": streaming_p99}


if __name__ == "__main__":
    main()
