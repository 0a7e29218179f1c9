"""Releases to publish, and the check that a pull brought back exactly what was published."""

from __future__ import annotations

import hashlib
from pathlib import Path

from nimbuild.profiles.manifest import Manifest, Profile, WorkspaceFile, load_manifest
from nimbuild.util.files import sha256_file

BIG = 40 << 20  # bigger than one 16 MB upload chunk



def make_release(out: Path, release: str = "1.0", big_seed: int = 1, model: str = "demo") -> Manifest:
    """Two profiles: a CPU one with a 40 MB graph, and a GPU one; they share a vocabulary file."""
    import random

    shared = b"\n".join(b"token%d" % i for i in range(5000))
    contents = {
        "onnxruntime-fp32-throughput": {"model.onnx": random.Random(big_seed).randbytes(BIG),
                                        "tokenizer/vocab.txt": shared, "model_info.json": b'{"precision": "fp32"}'},
        "tensorrt-sm90-fp16-throughput": {"model.plan": b"engine" * 1000, "tokenizer/vocab.txt": shared},
    }
    tags = {"onnxruntime-fp32-throughput": {"backend": "onnxruntime", "type": "generic", "precision": "fp32",
                                            "profile": "throughput"},
            "tensorrt-sm90-fp16-throughput": {"backend": "tensorrt", "type": "prebuilt", "precision": "fp16",
                                              "compute_capability": "9.0", "profile": "throughput"}}
    profiles = []
    for desc, files in contents.items():
        entries = {}
        for rel, data in files.items():
            path = out / "profiles" / desc / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            entries[rel] = WorkspaceFile(f"profiles/{desc}/{rel}", "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
        profiles.append(Profile.create(model, release, tags[desc], entries))
    manifest = Manifest(profiles)
    manifest.save(out / "profiles.yaml")
    return manifest



def assert_pulled_exactly(dest: Path, expected: Manifest, only: set[str] | None = None) -> None:
    pulled = load_manifest(dest / "profiles.yaml")
    wanted = [p for p in expected.profiles if only is None or p.description in only]
    assert [p.id for p in pulled.profiles] == [p.id for p in wanted]
    for p in pulled.profiles:
        for rel, f in p.files.items():
            path = dest / f.uri
            assert path.stat().st_size == f.size and "sha256:" + sha256_file(path) == f.digest, rel
