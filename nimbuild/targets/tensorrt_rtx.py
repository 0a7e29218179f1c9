"""TensorRT for RTX: engines built ahead of time, without a GPU, per compute capability.

`tensorrt-rtx` parses the variant's ONNX (the precision is in the graph: strongly typed) and
serialises an engine for the compute capabilities it is told, with one optimisation profile from
the recipe's [min, opt, max] shapes. Running an engine needs a GPU of that capability and the
TRT-RTX runtime of the same version, which the profile's `trt_version` tag records.
"""

from __future__ import annotations

from pathlib import Path

from nimbuild.errors import NimbuildError
from nimbuild.targets.trt_common import add_profile, parse_onnx, write_plan


def rtx_version() -> str | None:
    """The installed TensorRT-RTX version, from package metadata (nothing is imported)."""
    from nimbuild.profiles.system import runtime_version

    return runtime_version("tensorrt_rtx")


def require_rtx() -> str:
    found = rtx_version()
    if found is None:
        raise NimbuildError("tensorrt_rtx targets need TensorRT for RTX: pip install 'nimbuild[trt]'")
    return found


def build_engine(onnx_path: Path, inputs, compute_capability: str, out: Path) -> dict:
    """Serialise an engine for one compute capability; return what the build record keeps."""
    import tensorrt_rtx as trt

    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT-RTX networks are strongly typed
    parser = parse_onnx(trt, network, logger, onnx_path, "TensorRT-RTX")
    config = builder.create_builder_config()
    config.num_compute_capabilities = 1
    config.set_compute_capability(_capability(trt, compute_capability), 0)
    add_profile(builder, config, inputs)
    write_plan(builder.build_serialized_network(network, config), out, "TensorRT-RTX", compute_capability)
    del parser  # it owns the weights the network points at: it must live until the build is done
    # no timings here: the record is part of a manifest that must be byte-stable
    return {"builder": "tensorrt_rtx", "version": trt.__version__, "compute_capability": compute_capability}


def _capability(trt, cc: str):
    name = "SM" + cc.replace(".", "")
    if not hasattr(trt.ComputeCapability, name):
        known = ", ".join(n[2:-1] + "." + n[-1] for n in dir(trt.ComputeCapability) if n.startswith("SM"))
        raise NimbuildError(f"TensorRT-RTX {trt.__version__} cannot build for compute capability {cc} (it builds for {known})")
    return getattr(trt.ComputeCapability, name)

