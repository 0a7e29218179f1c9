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
        out[key if type(key) is str else str(key)] = value if type(value) is str else _tag_text(key, value)
    return ordered_tags(out)


def _tag_text(key: Any, value: Any) -> str:
    if value is None or isinstance(value, (list, tuple, set, dict)):
        kind = "no value" if value is None else f"a {type(value).__name__} value"
        raise ValueError(f"tag {str(key)!r} has {kind}; a tag's value is one string")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def ordered_tags(tags: Mapping[str, str]) -> dict[str, str]:
    keys = tuple(tags)
    order = _order(keys)
    if order == keys:  # already in order, as a manifest nimbuild wrote has them
        return dict(tags)
    return {k: tags[k] for k in order}


_ORDERS: dict[tuple[str, ...], tuple[str, ...]] = {}  # the profiles of a manifest share a handful of tag sets


def _order(keys: tuple[str, ...]) -> tuple[str, ...]:
    order = _ORDERS.get(keys)
    if order is None:
        order = tuple([k for k in TAG_ORDER if k in keys] + sorted(k for k in keys if k not in TAG_ORDER))
        if len(_ORDERS) < 4096:  # bounded: a hostile manifest of distinct tag sets only misses the cache
            _ORDERS[keys] = order
    return order


def describe(tags: Mapping[str, str]) -> str:
    """A readable name such as `tensorrt_rtx-sm89-fp16-throughput` or `onnxruntime-fp32-latency`."""
    key = tuple(tags.items())
    try:
        name = _NAMES.get(key)
    except TypeError:  # a value that is no string (callers normalise first; this one did not)
        return _describe(tags)
    if name is None:
        name = _describe(tags)
        if len(_NAMES) < 4096:
            _NAMES[key] = name
    return name


_NAMES: dict[tuple[tuple[str, str], ...], str] = {}


def _describe(tags: Mapping[str, str]) -> str:
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
