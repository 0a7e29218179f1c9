"""MiniLM: export time, and onnxruntime vs PyTorch CPU latency on the same graph and thread count."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from common import interleaved, median_ms, p, table

REPO = Path(__file__).resolve().parents[1]
THREADS = os.cpu_count() or 1


def main() -> str:
    import onnxruntime as ort
    import torch

    from nimbuild.export import export_reference
    from nimbuild.export.adapters import load_task
    from nimbuild.recipe import load_recipe
    from nimbuild.sources import resolve_source
    from nimbuild.util.progress import Reporter

    recipe = load_recipe(REPO / "examples" / "minilm-embed" / "recipe.yaml")
    checkpoint = resolve_source(recipe)
    steps = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        adapter = load_task(recipe.task, checkpoint)
        steps.append(["load checkpoint (PyTorch)", time.perf_counter() - t0])
        t0 = time.perf_counter()
        reference = export_reference(checkpoint, recipe, Path(tmp), Reporter(quiet=True))
        steps.append(["export_reference: load + export + check + parity (4 shapes)", time.perf_counter() - t0])
        torch.set_num_threads(THREADS)
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        session = ort.InferenceSession(str(reference.files[0]), options, providers=["CPUExecutionProvider"])
        rows = []
        for batch in (1, 8):
            feeds = adapter.sample_inputs({"batch": batch, "sequence": 128}, seed=0)
            feeds["attention_mask"][:] = 1
            tensors = [torch.from_numpy(feeds[n]) for n in adapter.input_names]

            def run_torch():
                with torch.inference_mode():
                    adapter.module(*tensors)

            times = interleaved({"ort": lambda: session.run(None, feeds), "torch": run_torch},
                                repeats=30 if batch == 1 else 12)
            ort_ms, torch_ms = median_ms(times["ort"]), median_ms(times["torch"])
            rows.append([f"{batch} x 128", ort_ms, p(times["ort"], 0.9), torch_ms, p(times["torch"], 0.9),
                         torch_ms / ort_ms])
    out = [table("MiniLM export (seconds)", ["step", "seconds"], steps)]
    out.append(table(f"MiniLM CPU latency, {THREADS} threads each, interleaved (ms)",
                     ["batch x seq", "ORT p50", "ORT p90", "torch p50", "torch p90", "torch/ORT"], rows))
    return "\n\n".join(out)


if __name__ == "__main__":
    print(main())
