"""Tag conventions (NIM's names where NIM has one) and readable descriptions built from tags."""

from __future__ import annotations

from typing import Any, Mapping

# The order tags appear in a written manifest and in descriptions; others follow alphabetically.
TAG_ORDER = (
    "backend", "llm_engine", "type", "precision", "compute_capability", "trt_version",
    "profile", "mode", "tp", "pp", "gpu", "gpu_device", "name",
)


def normalise_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    """All tag values are strings, as in NIM manifests; YAML may have read `tp: 1` as an int. A list
    or a mapping is no tag value (it rendered as `onnxruntime-['fp16', 'fp32']-...`): ValueError."""
    out = {}
    for key, value in tags.items():
        if value is None or isinstance(value, (list, tuple, set, dict)):
            kind = "no value" if value is None else f"a {type(value).__name__} value"
            raise ValueError(f"tag {str(key)!r} has {kind}; a tag's value is one string")
        if isinstance(value, bool):
            value = "true" if value else "false"
        out[str(key)] = str(value)
    return ordered_tags(out)


def ordered_tags(tags: Mapping[str, str]) -> dict[str, str]:
    known = [k for k in TAG_ORDER if k in tags]
    rest = sorted(k for k in tags if k not in TAG_ORDER)
    return {k: tags[k] for k in known + rest}


def describe(tags: Mapping[str, str]) -> str:
    """A readable name such as `tensorrt_rtx-sm89-fp16-throughput` or `onnxruntime-fp32-latency`."""
    parts = [tags.get("backend") or tags.get("llm_engine") or tags.get("type") or "profile"]
    if tags.get("compute_capability"):
        parts.append("-".join("sm" + cc.strip().replace(".", "") for cc in tags["compute_capability"].split(",")))
    if tags.get("gpu"):
        parts.append(tags["gpu"].lower().replace(" ", "_"))
    if tags.get("precision"):
        parts.append(tags["precision"].lower())
    for key in ("tp", "pp"):
        if tags.get(key) and tags[key] != "1":
            parts.append(f"{key}{tags[key]}")
    for key in ("profile", "mode"):
        if tags.get(key):
            parts.append(tags[key].lower())
    if tags.get("feat_lora", "false").lower() == "true":
        parts.append("lora")
    if tags.get("trtllm_buildable", "false").lower() == "true":
        parts.append("buildable")  # NIM's TensorRT-LLM profiles compiled from HF weights at start
    if tags.get("built_from"):
        parts.append("local")  # built on first start from another profile (runtime_min.local_cache)
    return "-".join(parts)
