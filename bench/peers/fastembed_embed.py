"""fastembed (a peer, run in bench/.venv-peers) on the graph a nimbuild profile serves: embeddings/s
in process at each batch size, and the embeddings of the check sentences, as JSON on stdout.

    python fastembed_embed.py WORKSPACE THREADS SECONDS SIZE [SIZE ...] < sentences.json

fastembed reads a model folder of its own shape (model.onnx beside tokenizer.json and its
configs); one is made of links to the profile's own files, so the graph is the same file."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path


def model_folder(workspace: Path) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="fastembed-"))
    (folder / "model.onnx").symlink_to(workspace / "model.onnx")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        if (workspace / "tokenizer" / name).exists():
            (folder / name).symlink_to(workspace / "tokenizer" / name)
    return folder


def main() -> None:
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    workspace, threads, seconds = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    sizes = [int(s) for s in sys.argv[4:]]
    sentences = json.load(sys.stdin)
    TextEmbedding.add_custom_model("nimbuild/profile", pooling=PoolingType.MEAN, normalization=True,
                                   sources=ModelSource(hf="nimbuild/profile"), dim=384, model_file="model.onnx")
    model = TextEmbedding("nimbuild/profile", specific_model_path=str(model_folder(workspace)), threads=threads)
    check = [vector.tolist() for vector in model.embed(sentences, batch_size=1)]
    rates = {}
    for size in sizes:
        batch = [sentences[i % len(sentences)] for i in range(size)]
        list(model.embed(batch, batch_size=size))  # warm
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            done += sum(1 for _ in model.embed(batch, batch_size=size))
        rates[size] = done / (time.perf_counter() - start)
    tokenizer = model.model.tokenizer
    print(json.dumps({"per_s": rates, "embeddings": check, "threads": threads,
                      "truncation": (tokenizer.truncation or {}).get("max_length"),
                      "padding": "batch-longest" if (tokenizer.padding or {}).get("length") is None else "fixed"}))


if __name__ == "__main__":
    main()
