"""Datacenter TensorRT engines (the `tensorrt` package, TensorRT 10 and 11 APIs).

Unlike TensorRT-RTX, TensorRT cannot build ahead of time: an engine is built on a GPU of the
target compute capability (an NGC container or a GPU CI runner). Options that matter for fleets:
hardware compatibility (none / Ampere and newer / same compute capability), version-compatible
engines, a timing cache loaded before and saved after each build, and the builder optimisation level.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from nimbuild.targets.trt_common import add_profile, parse_onnx, write_plan


def tensorrt_version() -> str | None:
    from nimbuild.profiles.system import runtime_version

    return runtime_version("tensorrt")


def triton_container(flavour: str = "py3") -> str | None:
    """The NGC Triton container this build runs in, which its engines need to run (the same
    TensorRT, on Triton's TensorRT backend): NGC's Triton images name their release in
    NVIDIA_TRITON_SERVER_VERSION (e.g. 25.01). None outside them; the profile then records only
    trt_version. `flavour`: py3, or trtllm-python-py3 for TensorRT-LLM's."""
    import os

    release = os.environ.get("NVIDIA_TRITON_SERVER_VERSION", "").strip()
    return f"nvcr.io/nvidia/tritonserver:{release}-{flavour}" if release else None


def why_not_buildable(cc: str) -> str | None:
    """None when this machine can build for `cc`; otherwise the reason, said plainly."""
    from nimbuild.profiles.system import detect_system

    needs = f"needs a GPU of compute capability {cc}"
    gpus = detect_system().gpus
    if not gpus:
        return f"{needs} (this machine has none; TensorRT cannot build ahead of time)"
    if gpus[0].compute_capability != cc:
        return f"{needs}; this machine's {gpus[0].name} is {gpus[0].compute_capability} (TensorRT cannot cross-build)"
    if importlib.util.find_spec("tensorrt") is None:
        return f"{needs} and TensorRT installed (an NGC container, or pip install tensorrt from NVIDIA's index)"
    return None


def build_engine(onnx_path: Path, inputs, cc: str, out: Path, target) -> dict:
    """Build on the local GPU (which must be `cc`); return the build record."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = parse_onnx(trt, network, logger, onnx_path, "TensorRT")
    config = builder.create_builder_config()
    add_profile(builder, config, inputs)
    levels = {"ampere_plus": "AMPERE_PLUS", "same_compute_capability": "SAME_COMPUTE_CAPABILITY"}
    if target.hardware_compatibility in levels:
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, levels[target.hardware_compatibility])
    if target.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if target.optimization_level is not None:
        config.builder_optimization_level = target.optimization_level
    cache_path = Path(target.timing_cache).expanduser() if target.timing_cache else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    write_plan(builder.build_serialized_network(network, config), out, "TensorRT", cc)
    del parser  # it owns the weights the network points at: it must live until the build is done
    if cache_path:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"builder": "tensorrt", "version": trt.__version__, "compute_capability": cc,
            "hardware_compatibility": target.hardware_compatibility, "version_compatible": target.version_compatible,
            "timing_cache": str(cache_path) if cache_path else None}
