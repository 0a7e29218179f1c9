"""Weight-only int4 and int8 for text generation (docs/design.md §17).

A decoder's generation is bound by reading its weights: int4 reads an eighth of fp32's bytes, int8
a quarter. Each MatMul with a constant weight (every projection and the LM head) becomes
onnxruntime's `com.microsoft::MatMulNBits`: weights quantised in blocks of `block_size` along the
input axis, a scale per block (RTN: symmetric round to nearest; HQQ: a scale and zero point fitted
per block); activations stay fp32 outside the kernel (inside it, accuracy level 4 quantises
them to int8). The quantizer is onnxruntime's own (`MatMulNBitsQuantizer`, the one
onnxruntime-genai's builder and Olive use, so the graph is what those tools would write and what
onnxruntime's kernels are tuned for); RTN calls its kernel one weight at a time on a graph whose
weights stay in their file (`_rtn_streamed`: the same bytes, without the whole graph in memory).
The embedding table stays fp32 (a Gather, not a MatMul).

Such a variant is gated on what serving does (nimbuild.precision.variants): its greedy tokens on
the parity prompts against the source's, and its perplexity on held text against the source's,
both recorded before the source was freed (nimbuild.export.llm.record_source).
"""

from __future__ import annotations

from pathlib import Path

from nimbuild.errors import NimbuildError

BITS = {"int4": 4, "int8": 8}


def quantize_weight_only(reference: Path, out: Path, precision: str, spec) -> Path:
    """Write the `precision` (int4 or int8) weight-only graph of `reference` to `out`."""
    from nimbuild.recipe import WeightOnly

    spec = spec or WeightOnly()
    if spec.algorithm == "rtn":
        count = _rtn_streamed(reference, out, BITS[precision], spec)
    else:
        count = _whole_graph(reference, out, BITS[precision], spec)
    if not count:
        raise NimbuildError(f"the {precision} weight-only variant quantised nothing: the graph has no MatMul "
                            "with a constant weight")
    data = out.with_name(out.name + ".data")
    if data.exists():  # a profile's files must be readable as the graph is (onnx writes it owner-only)
        data.chmod(out.stat().st_mode & 0o777)
    return out


def _rtn_streamed(reference: Path, out: Path, bits: int, spec) -> int:
    """RTN, one weight at a time: the reference graph is opened with its weights left in their
    file, and each MatMul's weight is read, quantised by onnxruntime's own kernel (the one
    MatMulNBitsQuantizer calls, so the blocks and scales are the same bytes) and let go as the
    variant is written. Peak memory is one weight and its blocks, not the graph (a 7B's fp32
    graph is 29 GB). Returns how many MatMuls became MatMulNBits."""
    import onnx_ir as ir

    from nimbuild.export.reference import EXTERNAL_WEIGHTS_FROM

    model = ir.load(reference)
    graph = model.graph
    count = 0
    for node in list(graph):
        weight = node.inputs[1] if node.op_type == "MatMul" and node.domain == "" else None
        if weight is None or not weight.is_initializer() or weight.const_value is None or weight.shape is None \
                or len(weight.shape) != 2 or weight.dtype != ir.DataType.FLOAT:
            continue
        blocks = _Blocks(weight.const_value, bits, spec.block_size)
        quantised = [_initializer(graph, f"{weight.name}_Q{bits}", blocks.shapes[0], ir.DataType.UINT8, blocks.packed),
                     _initializer(graph, f"{weight.name}_scales", blocks.shapes[1], ir.DataType.FLOAT, blocks.scales)]
        attributes = {"K": blocks.k, "N": blocks.n, "bits": bits, "block_size": spec.block_size}
        if spec.accuracy_level:  # 0 is the attribute's default, and unset where onnxruntime's quantizer leaves it
            attributes["accuracy_level"] = spec.accuracy_level
        nbits = ir.node("MatMulNBits", [node.inputs[0], *quantised], attributes, domain="com.microsoft",
                        name=f"{node.name}_Q{bits}" if node.name else None)
        ir.convenience.replace_nodes_and_values(graph, node, [node], [nbits], node.outputs, nbits.outputs)
        if not weight.uses():
            del graph.initializers[weight.name]
        count += 1
    model.opset_imports.setdefault("com.microsoft", 1)
    weights = sum(v.const_value.nbytes for v in graph.initializers.values() if v.const_value is not None)
    ir.save(model, out, external_data=out.name + ".data" if weights > EXTERNAL_WEIGHTS_FROM else None, max_workers=1)
    return count


class _Blocks:
    """One weight's MatMulNBits blocks ([N, blocks, bytes] packed, [N, blocks] scales), computed when
    the first of the two is written and let go after the second."""

    def __init__(self, tensor, bits: int, block_size: int):
        self.tensor, self.bits, self.block_size = tensor, bits, block_size
        self.k, self.n = (int(d) for d in tensor.shape)
        blocks = -(-self.k // block_size)
        self.shapes = ([self.n, blocks, block_size * bits // 8], [self.n, blocks])
        self._result: list | None = None

    def _take(self, index: int):
        if self._result is None or self._result[index] is None:  # first read (a second one recomputes)
            self._result = self._quantise()
        value, self._result[index] = self._result[index], None
        return value

    def _quantise(self) -> list:
        import numpy as np
        from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

        pad = self.shapes[1][1] * self.block_size - self.k
        weight = np.pad(self.tensor.numpy(), ((0, pad), (0, 0))) if pad else self.tensor.numpy()
        packed = np.zeros(self.shapes[0], dtype=np.uint8)
        scales = np.zeros(self.shapes[1], dtype=np.float32)
        zero_points = np.zeros((self.n, -(-self.shapes[1][1] * self.bits // 8)), dtype=np.uint8)  # symmetric: unused
        kernel = quantize_matmul_4bits if self.bits == 4 else quantize_matmul_8bits
        kernel(packed, np.ascontiguousarray(weight, dtype=np.float32), scales, zero_points, self.block_size,
               self.n, self.k, True)
        del weight
        if hasattr(self.tensor, "release"):
            self.tensor.release()  # unmap the reference's weight
        return [packed, scales]

    def packed(self):
        import onnx_ir as ir

        return ir.Tensor(self._take(0))

    def scales(self):
        import onnx_ir as ir

        return ir.Tensor(self._take(1))


def _initializer(graph, name: str, shape: list[int], dtype, compute):
    import onnx_ir as ir

    value = ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(dtype))
    value.const_value = ir.LazyTensor(compute, dtype=dtype, shape=ir.Shape(shape), name=name)
    graph.register_initializer(value)
    return value


def _whole_graph(reference: Path, out: Path, bits: int, spec) -> int:
    """onnxruntime's MatMulNBitsQuantizer over the whole graph in memory (HQQ fits each block's
    scale and zero point in torch, which it runs on the loaded graph)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    from nimbuild.export.reference import EXTERNAL_WEIGHTS_FROM

    if spec.algorithm == "hqq":
        config = HQQWeightOnlyQuantConfig(block_size=spec.block_size, bits=bits)
    else:
        config = DefaultWeightOnlyQuantConfig(block_size=spec.block_size, is_symmetric=True, bits=bits,
                                              accuracy_level=spec.accuracy_level or None)
    model = onnx.load(str(reference))  # with its external data: the quantizer reads every weight
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=spec.block_size, is_symmetric=True,
                                     accuracy_level=spec.accuracy_level or None, algo_config=config)
    quantizer.process()
    weights = sum(len(t.raw_data) for t in quantizer.model.model.graph.initializer)
    quantizer.model.save_model_to_file(str(out), use_external_data_format=weights > EXTERNAL_WEIGHTS_FROM)
    return sum(node.op_type == "MatMulNBits" for node in quantizer.model.model.graph.node)


def describe(spec) -> dict:
    """The build record's account of how the weights were quantised."""
    from nimbuild.recipe import WeightOnly

    spec = spec or WeightOnly()
    quantizer = ("onnxruntime's MatMulNBits kernel (MatMulNBitsQuantizer's), one weight at a time" if spec.algorithm == "rtn"
                 else "onnxruntime MatMulNBitsQuantizer")
    return {"operator": "com.microsoft::MatMulNBits", "quantizer": quantizer,
            "algorithm": spec.algorithm, "block_size": spec.block_size, "accuracy_level": spec.accuracy_level,
            "activations": "fp32" if not spec.accuracy_level else f"int8 inside the kernel (accuracy level {spec.accuracy_level})",
            "kept": "the embedding table (Gather)"}
