"""Weight-only int4 and int8 for text generation (docs/design.md §17).

A decoder's generation is bound by reading its weights: int4 reads an eighth of fp32's bytes, int8
a quarter. Each MatMul with a constant weight (every projection and the LM head) becomes
onnxruntime's `com.microsoft::MatMulNBits`: weights quantised in blocks of `block_size` along the
input axis, a scale per block (RTN: symmetric round to nearest; HQQ: a scale and zero point fitted
per block); activations stay fp32 outside the kernel (inside it, accuracy level 4 quantises
them to int8). The quantizer is onnxruntime's own (`MatMulNBitsQuantizer`),
the one onnxruntime-genai's builder and Olive use, so the graph is what those tools would write
and what onnxruntime's kernels are tuned for. The embedding table stays fp32 (a Gather, not a
MatMul).

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
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    from nimbuild.export.reference import EXTERNAL_WEIGHTS_FROM
    from nimbuild.recipe import WeightOnly

    spec = spec or WeightOnly()
    bits = BITS[precision]
    if spec.algorithm == "hqq":
        config = HQQWeightOnlyQuantConfig(block_size=spec.block_size, bits=bits)
    else:
        config = DefaultWeightOnlyQuantConfig(block_size=spec.block_size, is_symmetric=True, bits=bits,
                                              accuracy_level=spec.accuracy_level or None)
    model = onnx.load(str(reference))  # with its external data: the quantizer reads every weight
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=spec.block_size, is_symmetric=True,
                                     accuracy_level=spec.accuracy_level or None, algo_config=config)
    quantizer.process()
    if not any(node.op_type == "MatMulNBits" for node in quantizer.model.model.graph.node):
        raise NimbuildError(f"the {precision} weight-only variant quantised nothing: the graph has no MatMul "
                            "with a constant weight")
    weights = sum(len(t.raw_data) for t in quantizer.model.model.graph.initializer)
    quantizer.model.save_model_to_file(str(out), use_external_data_format=weights > EXTERNAL_WEIGHTS_FROM)
    data = out.with_name(out.name + ".data")
    if data.exists():  # onnx writes it owner-only; a profile's files must be readable as the graph is
        data.chmod(out.stat().st_mode & 0o777)
    return out


def describe(spec) -> dict:
    """The build record's account of how the weights were quantised."""
    from nimbuild.recipe import WeightOnly

    spec = spec or WeightOnly()
    return {"operator": "com.microsoft::MatMulNBits", "quantizer": "onnxruntime MatMulNBitsQuantizer",
            "algorithm": spec.algorithm, "block_size": spec.block_size, "accuracy_level": spec.accuracy_level,
            "activations": "fp32" if not spec.accuracy_level else f"int8 inside the kernel (accuracy level {spec.accuracy_level})",
            "kept": "the embedding table (Gather)"}
