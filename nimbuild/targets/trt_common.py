"""What TensorRT and TensorRT-RTX builds share: their Python APIs agree on parsing and profiles."""

from __future__ import annotations

from pathlib import Path

from nimbuild.errors import ExportError


def parse_onnx(trt, network, logger, onnx_path: Path, builder_name: str):
    """Parse into `network`, or fail naming each node the parser rejects and its operator."""
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise ExportError(f"{builder_name} cannot parse the graph: " + "; ".join(
            _describe(parser.get_error(i)) for i in range(parser.num_errors)))
    return parser


def add_profile(builder, config, inputs) -> None:
    """One optimisation profile from the recipe's [min, opt, max] per dimension."""
    profile = builder.create_optimization_profile()
    for spec in inputs:
        ranges = list(spec.dims.values())
        profile.set_shape(spec.name, tuple(r.min for r in ranges), tuple(r.opt for r in ranges),
                          tuple(r.max for r in ranges))
    config.add_optimization_profile(profile)


def write_plan(plan, out: Path, builder_name: str, cc: str) -> None:
    if plan is None:
        raise ExportError(f"{builder_name} could not build an engine for compute capability {cc}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(plan))


def _describe(error) -> str:
    node = f"node {error.node_name()!r} ({error.node_operator()})" if error.node_name() else f"node #{error.node()}"
    return f"{node}: {error.desc()}"
