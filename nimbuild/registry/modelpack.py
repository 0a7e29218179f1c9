"""A profile as a CNCF ModelPack artifact (modelpack/model-spec v1: docs/spec.md, docs/config.md,
specs-go/v1), so that modctl, KitOps, Harbor, Dragonfly and image-volume readers understand it.

Each profile gets a second manifest beside nimbuild's own, over the very same blobs: the files are
`.raw` layers (the file itself, no tar), so nothing is stored or sent twice. What differs is only
the descriptors: a ModelPack media type per file, `org.cncf.model.filepath` (and the OCI title, which
oras and other generic clients name files by), and a config blob in ModelPack's shape whose
`modelfs.diffIds` are the layer digests (a raw layer is its own uncompressed content).

The manifest also carries the profile's identity (ai.nimbuild.* annotations, the whole profile entry
as JSON), so `nimbuild pull` rebuilds the profile from the ModelPack manifest alone.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from nimbuild.registry.artifacts import MANIFEST, MODELPACK_TYPE, PREFIX, TITLE, Descriptor, canonical, digest_of
from nimbuild.tasks import BY_ID

ARTIFACT_TYPE = MODELPACK_TYPE
CONFIG = "application/vnd.cncf.model.config.v1+json"
WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.raw"
DOC = "application/vnd.cncf.model.doc.v1.raw"
CODE = "application/vnd.cncf.model.code.v1.raw"
FILEPATH = "org.cncf.model.filepath"
FILE_METADATA = "org.cncf.model.file.metadata+json"
PROFILE_JSON = PREFIX + "profile"  # the profile entry (no files), so the manifest alone is the profile

_WEIGHT_SUFFIXES = {".onnx", ".data", ".plan", ".engine", ".rmir", ".safetensors", ".bin", ".pt", ".ckpt",
                    ".nemo", ".riva", ".gguf", ".npy", ".npz"}
_DOC_NAMES = ("readme", "license", "notice", "model_card")
# NIM's precision tags in ModelPack's vocabulary (docs/config.md's table)
_PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp8": "float8_e4m3", "int8": "int8",
               "int4": "int4", "nvfp4": "float4_e2m1"}
_QUANTISED = {"int8": "int8", "fp8": "fp8", "int4": "int4", "nvfp4": "nvfp4"}
_FORMATS = {"onnxruntime": "onnx", "onnx": "onnx", "tensorrt": "tensorrt", "tensorrt_rtx": "tensorrt-rtx",
            "tensorrt_llm": "tensorrt-llm", "rmir": "rmir"}


def layer_media_type(path: str) -> str:
    """The ModelPack kind of one workspace file: weights, their configuration, code or documentation."""
    name = PurePosixPath(path).name.lower()
    suffix = PurePosixPath(name).suffix
    if suffix in _WEIGHT_SUFFIXES:
        return WEIGHT
    if suffix == ".py":
        return CODE
    if name.startswith(_DOC_NAMES) or suffix == ".md":
        return DOC
    return WEIGHT_CONFIG


def layers(profile) -> list[dict[str, Any]]:
    """One raw layer per workspace file, in path order, as nimbuild's own manifest lists them."""
    out = []
    for rel, f in sorted(profile.files.items()):
        metadata = {"name": PurePosixPath(rel).name, "mode": 0o644, "uid": 0, "gid": 0, "size": f.size,
                    "mtime": "1970-01-01T00:00:00Z", "typeflag": ord("0")}
        annotations = {FILEPATH: rel, TITLE: rel, FILE_METADATA: json.dumps(metadata, sort_keys=True)}
        out.append(Descriptor(layer_media_type(rel), f.digest, f.size, annotations).to_dict())
    return out


def config(profile, workspace: Path | None) -> bytes:
    """The ModelPack config (docs/config.md) of a profile; `workspace` (the local files, at publish)
    lets it read the task and count the graph's parameters."""
    info = _model_info(profile, workspace)
    row = BY_ID.get(str(info.get("task") or ""))  # what goes in and comes out, from the task table
    model: dict[str, Any] = {"format": _format(profile.tags)}
    if precision := _PRECISIONS.get(profile.tags.get("precision", "")):
        model["precision"] = precision
    if quantised := _QUANTISED.get(profile.tags.get("precision", "")):
        model["quantization"] = quantised
    if row and row.transformer:
        model["architecture"] = "transformer"
    if (count := _parameters(profile, workspace)) is not None:
        model["paramSize"] = param_size(count)
    if row:
        inputs, outputs = row.modality
        model["capabilities"] = {"inputTypes": list(inputs), "outputTypes": list(outputs)}
    descriptor = {"name": profile.model, "version": profile.release, "title": f"{profile.model} {profile.description}",
                  "description": f"nimbuild profile {profile.id} ({profile.description})"}
    diff_ids = [f.digest for _, f in sorted(profile.files.items())]
    return canonical({"descriptor": descriptor, "config": model, "modelfs": {"type": "layers", "diffIds": diff_ids}})


def manifest(profile, config_body: bytes, identity: dict[str, str]) -> bytes:
    entry = {k: v for k, v in profile.to_dict().items() if k != "workspace"}
    annotations = {**identity, PROFILE_JSON: json.dumps(entry, sort_keys=True, separators=(",", ":"))}
    return canonical({"schemaVersion": 2, "mediaType": MANIFEST, "artifactType": ARTIFACT_TYPE,
                      "config": Descriptor(CONFIG, digest_of(config_body), len(config_body)).to_dict(),
                      "layers": layers(profile), "annotations": annotations})


def param_size(count: int) -> str:
    """ModelPack's `<count><scale>` with at most one decimal: 22713216 -> "22.7M"."""
    for scale, letter in ((10**15, "Q"), (10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if count >= scale:
            return f"{count / scale:.1f}".removesuffix(".0") + letter
    return f"{count / 1000:.1f}K"


def profile_of(body: dict[str, Any], what: str, uri_of):
    """The nimbuild profile a ModelPack manifest packs (its files from the layers, each named by
    `uri_of(digest)`), or a clear error for a ModelPack artifact nimbuild did not write."""
    from nimbuild.errors import RegistryError
    from nimbuild.profiles.manifest import WorkspaceFile, manifest_from_data

    annotations = body.get("annotations")
    text = annotations.get(PROFILE_JSON) if isinstance(annotations, dict) else None
    if not isinstance(text, str):
        raise RegistryError(f"{what} is a ModelPack artifact without a nimbuild profile (no {PROFILE_JSON} "
                            "annotation); read it with modctl or kit, or publish the model with nimbuild")
    layers = Descriptor.listed(body.get("layers"), f"{what}: layers")
    try:
        entry = json.loads(text)
        files = {(d.annotations or {})[FILEPATH]: WorkspaceFile(uri_of(d.digest), d.digest, d.size) for d in layers}
    except (ValueError, KeyError, TypeError):
        raise RegistryError(f"{what}: malformed ModelPack manifest (its profile annotation or a layer)") from None
    if not isinstance(entry, dict):
        raise RegistryError(f"{what}: its {PROFILE_JSON} annotation is not a JSON object")
    entry["workspace"] = {"files": {p: {"uri": f.uri, "digest": f.digest, "size": f.size} for p, f in files.items()}}
    return manifest_from_data({"schema_version": "1.0", "profiles": [entry]}, what).profiles[0]


def _format(tags: dict[str, str]) -> str:
    if tags.get("type") == "rmir":
        return "rmir"
    backend = tags.get("llm_engine") or tags.get("backend") or tags.get("type") or ""
    return _FORMATS.get(backend, backend or "unknown")


def _model_info(profile, workspace: Path | None) -> dict[str, Any]:
    if workspace is None or "model_info.json" not in profile.files:
        return {}
    try:
        data = json.loads((workspace / profile.files["model_info.json"].uri).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


COUNTED_GRAPH_BYTES = 256 << 20  # onnx.load holds a graph file in memory; publish otherwise streams


def _parameters(profile, workspace: Path | None) -> int | None:
    """Elements in the graph's initializers (its weights), read without loading external data; None
    where the workspace holds no ONNX graph (an engine, an RMIR), onnx is not installed, or a graph
    file keeps its weights inline and is too big to parse within publish's small memory."""
    graphs = [rel for rel in profile.files if rel.endswith(".onnx")]
    if workspace is None or not graphs or any(profile.files[rel].size > COUNTED_GRAPH_BYTES for rel in graphs):
        return None
    try:
        import onnx
    except ImportError:
        return None
    total = 0
    for rel in graphs:
        try:
            graph = onnx.load(str(workspace / profile.files[rel].uri), load_external_data=False).graph
        except Exception:  # a graph onnx cannot parse still publishes; its size is then unknown
            return None
        for tensor in graph.initializer:
            count = 1
            for dim in tensor.dims:
                count *= dim
            total += count
    return total
