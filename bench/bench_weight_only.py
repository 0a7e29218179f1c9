"""Weight-only int4 and int8 text generation against fp32 and against onnxruntime-genai's int4, on
bench_llm's two checkpoints (tiny-llama, and the 76M-parameter Llama made from a config).

Per model: nimbuild compiles fp32, int8 and int4 profiles from the checkpoint (MatMulNBits, block
32; the gates' figures come from the build records), and onnxruntime-genai's model builder makes
its int4 graph from the same checkpoint (`-p int4 -e cpu`, in the peers' environment). Every graph
then generates the same 64 greedy tokens from the same prompt ids at batch 1 and 8 with 2 intra-op
threads: nimbuild's through runtime_min's generator (the loop its Triton model runs, in this
process), genai's through its own generator. Reported: the graph's size, decode tokens/s, and how
many of fp32's 64 tokens each serves before the first difference.

The same work is checked in code: prompt ids, token count and threads on every side, and the two
int4 graphs' quantisation read from the graphs themselves (MatMulNBits bits, block size, accuracy
level; genai's CPU int4 computes with accuracy level 4, int8 activations inside the kernel, so
nimbuild's int4 beside it is built at that level too).
Random weights make every figure of agreement a floor: their logits are close to ties, which
rounding flips early; the figures that carry over to real checkpoints are sizes and tokens/s.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench_llm import NEW_TOKENS, PROMPT, ROUNDS, THREADS, _recipe, for_each_model
from bench_peer_llm import _built, _OwnLoop

from common import compile_recipe, run_peer, table

SIZES = (1, 8)
# the gates a random checkpoint passes (agreement there is a floor; see the module docstring)
GATES = {"int8": "{gate: {tokens_min: 0.0, perplexity_delta_max: 0.05}}",
         "int4": "{gate: {tokens_min: 0.0, perplexity_delta_max: 0.5}, weight_only: {block_size: 32}}",
         "int4-exact": "{gate: {tokens_min: 0.0, perplexity_delta_max: 0.5}, weight_only: {block_size: 32, accuracy_level: 0}}"}


def _weight_only_recipe(name: str, source: Path, int4: str) -> str:
    """bench_llm's fp32 recipe with int8 and int4 declared and built by its generic target."""
    text = _recipe(name, source)
    text = text.replace("  fp32: {}\n", f"  fp32: {{}}\n  int8: {GATES['int8']}\n  int4: {GATES[int4]}\n")
    lines = [ln for ln in text.splitlines() if "lora:" not in ln and "LoRA heads" not in ln
             and "adapters of rank" not in ln and not ln.strip().startswith(("fp16:", "fp8:"))]
    text = "\n".join(lines).replace("precisions: [fp32]}", "precisions: [fp32, int8, int4]}")
    return text + "\n"


def _profiles(out: Path) -> dict:
    from nimbuild.profiles.manifest import load_manifest

    return {p.tags["precision"]: p for p in load_manifest(out / "profiles.yaml").profiles}


def _quantisation(graph: Path) -> set[tuple[int, int, int]]:
    """(bits, block size, accuracy level) of every MatMulNBits in the graph."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    found = set()
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            found.add((attrs.get("bits", 4), attrs["block_size"], attrs.get("accuracy_level", 0)))
    return found


def _size(folder: Path, names=("model.onnx", "model.onnx.data")) -> int:
    return sum((folder / n).stat().st_size for n in names if (folder / n).exists())


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _bench(name: str, source: Path, work: Path) -> dict:
    rows = {}
    for int4 in ("int4",):  # "int4-exact" (accuracy level 0) too, for what level 4 costs in agreement
        out = work / f"out-{int4}"
        (work / f"{int4}.yaml").write_text(_weight_only_recipe(name, source, int4))
        compile_recipe(work / f"{int4}.yaml", out)
        profiles = _profiles(out)
        for precision, profile in profiles.items():
            label = f"nimbuild {precision}" + (" (accuracy level 0)" if int4 == "int4-exact" and precision == "int4" else "")
            if label in rows or (int4 == "int4-exact" and precision != "int4"):
                continue
            folder = out / "profiles" / profile.description
            loop = _OwnLoop(folder)
            rows[label] = {"size_mb": _size(folder) / 1e6, "gate": profile.build.get("gate"),
                           "quantisation": sorted(_quantisation(folder / "model.onnx")),
                           **{n: loop.rows(n) for n in SIZES}}
            prompt = loop.prompt()
    genai_dir = _built(source, work / "genai", precision="int4")
    peer = run_peer("ortgenai_generate.py", genai_dir, NEW_TOKENS, ROUNDS, *SIZES, stdin=json.dumps(prompt))
    rows["onnxruntime-genai int4"] = {"size_mb": _size(genai_dir, ("model.onnx", "model.onnx.data")) / 1e6,
                                      "quantisation": sorted(_quantisation(genai_dir / "model.onnx")),
                                      **{n: peer["sizes"][str(n)] for n in SIZES}}
    # the same work: prompt, tokens, threads, and the same int4 form on both sides
    assert peer["threads"] == THREADS, f"onnxruntime-genai ran {peer['threads']} threads"
    ours, theirs = rows["nimbuild int4"]["quantisation"], rows["onnxruntime-genai int4"]["quantisation"]
    assert {q[0] for q in theirs} == {4} and ours == theirs, f"int4 forms differ: nimbuild {ours}, genai {theirs}"
    for label, row in rows.items():
        assert all(len(row[n]["tokens"]) == NEW_TOKENS for n in SIZES), f"{label} stopped early"
    reference = rows["nimbuild fp32"][1]["tokens"]
    for row in rows.values():
        row["agreement"] = {n: _first_difference(reference, row[n]["tokens"]) for n in SIZES}
    return {"rows": rows, "prompt_tokens": len(prompt), "genai": peer["version"]}


def main() -> tuple[str, dict]:
    results = for_each_model(_bench)
    lines = []
    for name, result in results.items():
        fp32 = result["rows"]["nimbuild fp32"]
        for label, row in result["rows"].items():
            gate = row.get("gate") or {}
            lines.append([name, label, f"{row['size_mb']:.1f}", *(f"{row[n]['decode']:.1f}" for n in SIZES),
                          *(f"{row[n]['decode'] / fp32[n]['decode']:.2f}x" for n in SIZES),
                          f"{row['agreement'][1]}/{NEW_TOKENS}",
                          gate.get("token_agreement", "-"), gate.get("perplexity_delta", "-")])
    text = table(f"Weight-only int4/int8 against fp32 and onnxruntime-genai's int4 ({THREADS} threads, greedy, "
                 f"{NEW_TOKENS} tokens, median of {ROUNDS})",
                 ["model", "graph", "MB", "decode tok/s b1", "b8", "vs fp32 b1", "b8", "tokens = fp32's",
                  "gate agreement", "gate perplexity delta"], lines)
    text += (f"\n(prompt: {len(PROMPT.split())} words; random weights: agreement is a floor, see bench_weight_only.py; "
             f"onnxruntime-genai {next(iter(results.values()))['genai']})")
    return text, results
