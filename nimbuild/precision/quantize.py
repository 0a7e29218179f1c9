"""Explicit (Q/DQ) quantisation of linear layers to int8 or fp8, for engine targets.

TensorRT and TensorRT-RTX take int8/fp8 only as explicit quantisation: QuantizeLinear /
DequantizeLinear pairs in the graph, symmetric (zero point 0), per-tensor on activations and
per-output-channel on weights. This module writes exactly that, for the layers that carry the
compute: MatMul/Gemm nodes with one constant weight.

Why not onnxruntime's quantize_static: its fp8 path calibrates from the distribution's spread and
gave MiniLM a served-embedding cosine of 0.33 here, and NVIDIA's Model Optimizer needs
onnxruntime-gpu. The scheme itself is small and standard: scale = amax / qmax, amax from
calibration (activations) or the weights themselves.

Some layers do not survive per-tensor quantisation (BERT's FFN output projection sees a few
activations tens of times larger than the rest). Each layer's error in isolation is measured on the
calibration set, and when the variant misses its gate the most sensitive layers are kept in fp32,
one doubling step at a time, the usual accuracy-driven fallback of PTQ tools. The profile records
which layers were kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from nimbuild.errors import GateError

# format -> (ONNX element type name, largest magnitude, lowest opset whose QuantizeLinear takes it)
FORMATS = {"int8": ("INT8", 127.0, 13), "fp8": ("FLOAT8E4M3FN", 448.0, 19)}


@dataclass(frozen=True)
class Linear:
    node: str  # node name
    activation: str  # the activation input's value name
    weight: str  # the constant weight's initializer name
    channel_axis: int  # the weight axis that indexes output channels


def linear_layers(model) -> list[Linear]:
    """MatMul/Gemm nodes computing activation x constant 2-D weight."""
    weights = {i.name: i for i in model.graph.initializer if len(i.dims) == 2}
    layers = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        activation, weight = node.input[0], node.input[1]
        if weight not in weights or activation in weights:
            continue
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        layers.append(Linear(node.name, activation, weight, 0 if node.op_type == "Gemm" and trans_b else 1))
    return layers


def calibrate(reference: Path, layers: list[Linear], batches: Iterable[dict]) -> dict[str, np.ndarray]:
    """Each layer's activation samples over the calibration batches, flattened to rows of features."""
    import onnx

    from nimbuild.export.reference import open_session

    model = onnx.load(str(reference))
    wanted = sorted({layer.activation for layer in layers})
    known = {o.name for o in model.graph.output}
    for name in wanted:
        if name not in known:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    probe = reference.with_name("calibration-probe.onnx")
    onnx.save(model, str(probe))
    try:
        session = open_session(probe)
        samples: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
        for feeds in batches:
            for name, value in zip(wanted, session.run(wanted, feeds)):
                samples[name].append(value.reshape(-1, value.shape[-1]).astype(np.float32))
    finally:
        probe.unlink(missing_ok=True)
    return {name: np.concatenate(rows) for name, rows in samples.items()}


def sensitivity(reference: Path, layers: list[Linear], activations: dict[str, np.ndarray], fmt: str) -> dict[str, float]:
    """Relative error of each layer's output when only that layer is quantised, on calibration data."""
    import onnx
    from onnx import numpy_helper

    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(reference)).graph.initializer}
    errors = {}
    for layer in layers:
        x = activations[layer.activation][:4096]
        w = weights[layer.weight].astype(np.float32)
        w = w if layer.channel_axis == 1 else w.T
        exact = x @ w
        approx = _fake_quant(x, _amax(x), fmt) @ _fake_quant(w, np.abs(w).max(axis=0), fmt)
        errors[layer.node] = float(np.linalg.norm(approx - exact) / max(np.linalg.norm(exact), 1e-12))
    return errors


def quantize(reference: Path, out: Path, fmt: str, layers: list[Linear], activations: dict[str, np.ndarray],
             keep: Iterable[str] = ()) -> Path:
    """Write the Q/DQ graph: every linear layer quantised except those named in keep."""
    import onnx
    from onnx import numpy_helper

    type_name, qmax, min_opset = FORMATS[fmt]
    elem = getattr(onnx.TensorProto, type_name)
    model = onnx.load(str(reference))
    _ensure_opset(model, min_opset)
    keep = set(keep)
    nodes = {n.name: n for n in model.graph.node}
    initializers = {i.name: i for i in model.graph.initializer}
    chains: dict[str, list] = {}  # value read -> the Q/DQ nodes that read it
    quantized_acts, quantized_weights = {}, {}
    for layer in layers:
        if layer.node in keep:
            continue
        node = nodes[layer.node]
        if layer.activation not in quantized_acts:  # one Q/DQ pair per activation, shared by its readers
            scale = np.float32(_amax(activations[layer.activation]) / qmax)
            quantized_acts[layer.activation] = _qdq(model, chains, layer.activation, scale, elem)
        node.input[0] = quantized_acts[layer.activation]
        if (layer.weight, layer.channel_axis) in quantized_weights:  # a weight shared by layers: one copy
            node.input[1] = quantized_weights[layer.weight, layer.channel_axis]
            continue
        w = numpy_helper.to_array(initializers[layer.weight]).astype(np.float32)
        reduce_axis = 1 - layer.channel_axis
        scales = (np.maximum(np.abs(w).max(axis=reduce_axis), 1e-12) / qmax).astype(np.float32)
        q = _to_format(w / np.expand_dims(scales, reduce_axis), fmt)
        stored = f"{layer.weight}_quantized_{layer.channel_axis}"
        model.graph.initializer.append(_tensor(stored, q, elem))
        node.input[1] = _dequantize(model, chains, stored, scales, layer.channel_axis, elem)
        quantized_weights[layer.weight, layer.channel_axis] = node.input[1]
    _insert_in_order(model, chains)
    unused = {layer.weight for layer in layers if layer.node not in keep}
    still_read = {i for n in model.graph.node for i in n.input}
    kept = [i for i in model.graph.initializer if i.name not in unused or i.name in still_read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    onnx.save(model, str(out))
    return out


def quantize_gated(reference: Path, out: Path, fmt: str, batches: list[dict],
                   passes: Callable[[Path], object]) -> tuple[Path, object, list[str]]:
    """Quantise; while the gate misses, keep the 1, 2, 4, ... most sensitive layers in fp32.
    Returns (graph, the passing comparison, layers kept in fp32); raises the last gate error."""

    layers, activations = calibrated_layers(reference, batches, fmt)
    ranked = _ranked(reference, layers, activations, fmt)
    count, last_error = 0, None
    while count <= len(layers) // 2:
        keep = [layer.node for layer in ranked[:count]]
        quantize(reference, out, fmt, layers, activations, keep)
        try:
            return out, passes(out), keep
        except GateError as e:
            last_error = e
        count = 1 if count == 0 else count * 2
    raise GateError(f"{last_error}\n(still missed with the {len(ranked[:count // 2])} most sensitive of "
                    f"{len(layers)} layers kept in fp32)") from None


def calibrated_layers(reference: Path, batches: list[dict], fmt: str) -> tuple[list[Linear], dict[str, np.ndarray]]:
    """The graph's linear layers and their activations on the calibration batches."""
    import onnx


    layers = linear_layers(onnx.load(str(reference), load_external_data=False))
    if not layers:
        raise GateError(f"{reference.name} has no MatMul/Gemm layer with constant weights to quantise to {fmt}")
    return layers, calibrate(reference, layers, batches)


def _ranked(reference: Path, layers: list[Linear], activations: dict, fmt: str) -> list[Linear]:
    errors = sensitivity(reference, layers, activations, fmt)
    return sorted(layers, key=lambda layer: (-errors[layer.node], layer.node))


def _amax(x: np.ndarray):
    return max(float(np.abs(x).max()), 1e-12)


def _to_format(x: np.ndarray, fmt: str) -> np.ndarray:
    _, qmax, _ = FORMATS[fmt]
    if fmt == "int8":
        return np.clip(np.rint(x), -qmax, qmax).astype(np.int8)
    import ml_dtypes

    return np.clip(x, -qmax, qmax).astype(ml_dtypes.float8_e4m3fn)


def _fake_quant(x: np.ndarray, amax, fmt: str) -> np.ndarray:
    _, qmax, _ = FORMATS[fmt]
    scale = np.maximum(np.asarray(amax, dtype=np.float32), 1e-12) / qmax
    return _to_format(x / scale, fmt).astype(np.float32) * scale


def _tensor(name: str, values: np.ndarray, elem: int):
    from onnx import helper

    raw = values.view(np.uint8).tobytes()
    return helper.make_tensor(name, elem, values.shape, raw, raw=True)


def _zero_point(model, name: str, shape: tuple, elem: int) -> str:
    model.graph.initializer.append(_tensor(name, np.zeros(shape, dtype=np.uint8), elem))
    return name


def _qdq(model, chains: dict, value: str, scale: np.float32, elem: int) -> str:
    from onnx import helper, numpy_helper

    scale_name, zp = value + "_scale", _zero_point(model, value + "_zero_point", (), elem)
    model.graph.initializer.append(numpy_helper.from_array(np.array(scale, dtype=np.float32), scale_name))
    quantized, dequantized = value + "_q", value + "_dq"
    chains[value] = [helper.make_node("QuantizeLinear", [value, scale_name, zp], [quantized], name=value + "_Q"),
                     helper.make_node("DequantizeLinear", [quantized, scale_name, zp], [dequantized],
                                      name=value + "_DQ")]
    return dequantized


def _dequantize(model, chains: dict, stored: str, scales: np.ndarray, axis: int, elem: int) -> str:
    from onnx import helper, numpy_helper

    scale_name = stored + "_scale"
    zp = _zero_point(model, stored + "_zero_point", scales.shape, elem)
    model.graph.initializer.append(numpy_helper.from_array(scales, scale_name))
    dequantized = stored + "_dq"
    chains[stored] = [helper.make_node("DequantizeLinear", [stored, scale_name, zp], [dequantized],
                                       name=stored + "_DQ", axis=axis)]
    return dequantized


def _insert_in_order(model, chains: dict[str, list]) -> None:
    """Keep the graph topologically sorted: each chain goes right after the producer of the value it
    reads, or first when that value is a graph input or a constant."""
    ready = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
    ordered = [node for value, nodes in chains.items() if value in ready for node in nodes]
    for node in model.graph.node:
        ordered.append(node)
        for output in node.output:
            ordered.extend(chains.get(output, []))
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def _ensure_opset(model, minimum: int) -> None:
    """fp8 Q/DQ needs opset 19; the ops that changed from 18 to 19 only gained types and attributes."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version < minimum:
            entry.version = minimum
