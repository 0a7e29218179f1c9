"""Precision variants of the reference fp32 ONNX, each gated against it (DESIGN.md §4).

TensorRT 11 and TensorRT-RTX build strongly typed networks: the precision lives in the graph.
So each variant is a graph of its own:

- fp16: onnxconverter-common's float16 conversion, inputs and outputs kept fp32, and the
  numerically fragile ops (LayerNorm, Softmax, reductions, Pow/Sqrt, Erf) kept in fp32.
- int8 (generic profiles): onnxruntime's dynamic quantization: int8 weights per channel,
  activations quantised at run time, the standard CPU int8 path (1.9x faster than fp32 on MiniLM
  here). Q/DQ static quantisation for TensorRT engines is not built yet.

The gate runs the variant and the reference with onnxruntime on a fixed, seeded evaluation set and
compares what the profile serves (for embeddings: the pooled, normalised vectors; otherwise the raw
output). A variant that misses its gate is refused with the figures; a gate never only warns.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from nimbuild.errors import NimbuildError
from nimbuild.export.parity import Comparison

GATE_SEED = 7
# Gates used when the recipe gives none, per precision (minimum cosine of served outputs).
DEFAULT_COSINE = {"fp16": 0.999, "int8": 0.98}
FP16_KEEP_FP32 = ["LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "Erf", "Range", "CumSum"]


class GateError(NimbuildError):
    """A variant that does not keep close enough to the reference."""


def make_variant(reference: Path, precision: str, dest: Path) -> Path:
    """Write the `precision` variant of the reference graph to dest/model.onnx."""
    dest.mkdir(parents=True, exist_ok=True)
    with _quiet():
        return _convert(reference, precision, dest / "model.onnx")


@contextmanager
def _quiet():
    """The converters warn per truncated constant and log advice to the root logger; not ours to show."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def _convert(reference: Path, precision: str, out: Path) -> Path:
    if precision == "fp16":
        import onnx
        from onnxconverter_common import float16

        original = onnx.load(str(reference))
        model = float16.convert_float_to_float16(original, keep_io_types=True, op_block_list=FP16_KEEP_FP32)
        _restore_fp32_outputs(model, {o.name: o.type.tensor_type.elem_type for o in original.graph.output})
        onnx.save(model, str(out))
    elif precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(reference), str(out), weight_type=QuantType.QInt8, per_channel=True)
    else:
        raise NimbuildError(f"precision {precision} variants are not supported by this version of nimbuild yet")
    return out


def _restore_fp32_outputs(model, original_types: dict) -> None:
    """keep_io_types is defeated when an output comes from an op kept in fp32 (MiniLM's last
    LayerNorm): the converter casts it to fp16 straight into the graph output. Make such outputs
    fp32 again: retarget that cast when nothing else reads it, else cast back at the end."""
    from onnx import TensorProto, helper

    for output in model.graph.output:
        if output.type.tensor_type.elem_type != TensorProto.FLOAT16 or original_types.get(output.name) != TensorProto.FLOAT:
            continue
        producer = next(n for n in model.graph.node if output.name in n.output)
        read_inside = any(output.name in n.input for n in model.graph.node)
        if producer.op_type == "Cast" and not read_inside:
            for attribute in producer.attribute:
                if attribute.name == "to":
                    attribute.i = TensorProto.FLOAT
        else:
            inner = output.name + "_fp16"
            for node in model.graph.node:
                node.output[:] = [inner if x == output.name else x for x in node.output]
                node.input[:] = [inner if x == output.name else x for x in node.input]
            model.graph.node.append(helper.make_node("Cast", [inner], [output.name], to=TensorProto.FLOAT,
                                                     name=output.name + "_to_fp32"))
        output.type.tensor_type.elem_type = TensorProto.FLOAT


def gate(adapter, reference: Path, variant: Path, precision: str, spec, inputs) -> Comparison:
    """Compare the variant with the reference on the evaluation set; refuse it when it misses."""
    from nimbuild.export import open_session, parity_shapes

    cosine_min = spec.cosine_min if spec and spec.cosine_min is not None else DEFAULT_COSINE[precision]
    max_abs = spec.max_abs if spec and spec.max_abs is not None else float("inf")
    comparison = Comparison(atol=max_abs, rtol=0.0, cosine_min=cosine_min)
    ref_session, var_session = open_session(reference), open_session(variant)
    pooling = adapter.runtime_info.get("pooling") if adapter.task == "embedding" else None
    for i, (batch, seq) in enumerate(parity_shapes(inputs[0])):
        feeds = adapter.sample_inputs({"batch": batch, "sequence": seq}, seed=GATE_SEED + i)
        expected = _served(ref_session.run(None, feeds)[0], feeds, pooling, adapter.runtime_info)
        got = _served(var_session.run(None, feeds)[0], feeds, pooling, adapter.runtime_info)
        comparison.add(f"{batch}x{seq}", {"served": expected}, {"served": got})
    if not comparison.passed:
        raise GateError(f"the {precision} variant misses its gate (shapes {', '.join(comparison.shapes)}):\n"
                        + comparison.describe())
    return comparison


def _served(output: np.ndarray, feeds: dict, pooling: str | None, info: dict) -> np.ndarray:
    """What a client receives: for an embedding model, the pooled (and normalised) vector."""
    from nimbuild.pooling import pool

    output = output.astype(np.float64)
    if pooling is None:
        return output
    return pool(output, feeds["attention_mask"], pooling, bool(info.get("normalize")))
