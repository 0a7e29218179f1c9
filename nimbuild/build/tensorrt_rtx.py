"""TensorRT for RTX: engines built ahead of time, without a GPU, per compute capability.

`tensorrt-rtx` parses the variant's ONNX (the precision is in the graph: strongly typed) and
serialises an engine for the compute capabilities it is told, with one optimisation profile from
the recipe's [min, opt, max] shapes. Running an engine needs a GPU of that capability and the
TRT-RTX runtime of the same version, which the profile's `trt_version` tag records.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from nimbuild.errors import ExportError, NimbuildError

DISTRIBUTIONS = ("tensorrt-rtx", "tensorrt-rtx-cu12", "tensorrt-rtx-cu13")


def rtx_version() -> str | None:
    """The installed TensorRT-RTX version, from package metadata (nothing is imported)."""
    for dist in DISTRIBUTIONS:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


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
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise ExportError("TensorRT-RTX cannot parse the graph: " + "; ".join(
            _describe(parser.get_error(i)) for i in range(parser.num_errors)))
    config = builder.create_builder_config()
    config.num_compute_capabilities = 1
    config.set_compute_capability(_capability(trt, compute_capability), 0)
    profile = builder.create_optimization_profile()
    for spec in inputs:
        ranges = list(spec.dims.values())
        profile.set_shape(spec.name, tuple(r.min for r in ranges), tuple(r.opt for r in ranges),
                          tuple(r.max for r in ranges))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT-RTX could not build an engine for compute capability {compute_capability}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(plan))
    # no timings here: the record is part of a manifest that must be byte-stable
    return {"builder": "tensorrt_rtx", "version": trt.__version__, "compute_capability": compute_capability}


def _capability(trt, cc: str):
    name = "SM" + cc.replace(".", "")
    if not hasattr(trt.ComputeCapability, name):
        known = ", ".join(n[2:-1] + "." + n[-1] for n in dir(trt.ComputeCapability) if n.startswith("SM"))
        raise NimbuildError(f"TensorRT-RTX {trt.__version__} cannot build for compute capability {cc} (it builds for {known})")
    return getattr(trt.ComputeCapability, name)


def _describe(error) -> str:
    node = f"node {error.node_name()!r} ({error.node_operator()})" if error.node_name() else f"node #{error.node()}"
    return f"{node}: {error.desc()}"
