"""Precision variants of the reference fp32 ONNX, each gated against it (docs/design.md §4).

TensorRT 11 and TensorRT-RTX build strongly typed networks: the precision lives in the graph.
So each variant is a graph of its own, made by the tool that does it well:

- fp16: onnxconverter-common's float16 conversion, inputs and outputs kept fp32, and the
  numerically fragile ops (LayerNorm, Softmax, reductions, Pow/Sqrt, Erf) kept in fp32.
- bf16: the same placement of casts, with bfloat16 tensors whose values are rounded from the fp32
  originals (not from fp16). onnxruntime has no CPU kernels for bf16 arithmetic, so its gate runs an
  emulation: the same graph in fp32 with every bf16 value rounded to bf16, which is what a GPU's
  bf16 kernels (fp32 accumulation, bf16 results) compute.
- int8 for generic profiles: onnxruntime's dynamic quantisation, int8 weights per channel and
  activations quantised at run time: the standard CPU int8 path (1.9x faster than fp32 on MiniLM).
- int8 and fp8 for engines: explicit Q/DQ on the linear layers with calibration (nimbuild.precision.quantize),
  the form TensorRT and TensorRT-RTX take.
- int4 and int8 for text generation: weight-only (`MatMulNBits`, nimbuild.precision.weight_only),
  the form decoders' generation, bound by reading weights, gains from.

The gate runs the variant and the reference with onnxruntime on a fixed, seeded evaluation set and
compares what the profile serves (for embeddings: the pooled, normalised vectors; for speech
encoder-decoders, Whisper and Canary: the greedy transcripts of the parity audio, token by token;
for text generation: the greedy tokens on the parity prompts against the source's, and the
perplexity on held text against the source's; otherwise the raw output). A variant that misses
its gate is refused with the figures; a gate never only warns. A variant this machine cannot
evaluate is refused too, unless the recipe says `gate: {evaluate: false}`; its profile then
records that the gate did not run.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nimbuild.errors import GateError, NimbuildError, first_line
from nimbuild.export.parity import Comparison

GATE_SEED = 7
CALIBRATION_SEED = 1234
CALIBRATION_BATCH = 8
# Gates used when the recipe gives none, per precision (minimum cosine of served outputs).
DEFAULT_COSINE = {"fp16": 0.999, "bf16": 0.995, "int8": 0.98, "fp8": 0.98}
# ... and for speech encoder-decoders, the share of fp32's greedy tokens served the same (TokenAgreement)
DEFAULT_TOKENS = {"fp16": 0.99, "bf16": 0.98, "int8": 0.95, "fp8": 0.95, "int4": 0.8}
# ... and for text generation's weight-only variants, how far from the source's their perplexity on
# held text may be, relative, either way (a variant that is "better" on the held text differs too)
DEFAULT_PERPLEXITY_DELTA = {"int8": 0.02, "int4": 0.1}
FP16_KEEP_FP32 = ["LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "Erf", "Range", "CumSum"]
# How each variant's graph is made; int8 takes two forms (see the module docstring).
FORMS = {"fp16": "fp16", "bf16": "bf16", "fp8": "fp8-qdq"}


def form_for(precision: str, backend: str, weight_only: bool = False) -> str:
    """The graph a precision becomes for a backend: int8 is dynamic for onnxruntime, Q/DQ for engines;
    int4 and int8 are weight-only for text generation (`weight_only`)."""
    if weight_only and precision in ("int4", "int8"):
        return f"{precision}-wo"
    if precision == "int8":
        return "int8-dynamic" if backend == "onnxruntime" else "int8-qdq"
    return FORMS[precision]


def make_gated(reference, form: str, spec, dest: Path, calibration: list[dict]) -> tuple[Path, dict]:
    """Make the variant in dest/model.onnx and gate it; return the graph and its verification record."""
    precision = form.split("-")[0]
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / "model.onnx"
    gate_spec = spec.gate if spec else None
    evaluate = gate_spec is None or gate_spec.evaluate
    with _quiet():
        if form in ("int8-qdq", "fp8-qdq") and evaluate:
            from nimbuild.precision.quantize import quantize_gated

            graph, comparison, kept = quantize_gated(
                reference.files[0], out, precision, calibration,
                lambda candidate: gate(reference, candidate, form, gate_spec))
            return graph, _record(form, comparison, quantization=_quantization_record(calibration, kept))
        if form.endswith("-wo"):
            from nimbuild.precision.weight_only import describe, quantize_weight_only

            graph = quantize_weight_only(reference.files[0], out, precision, spec.weight_only if spec else None)
            extra = {"quantization": describe(spec.weight_only if spec else None),
                     "compared_with": f"the source in {reference.adapter.recorded.dtype}"}
            if not reference.parity.outputs:  # the fp32 graph was not opened (nimbuild.export.llm)
                extra["parity"] = reference.parity.summary()
        else:
            graph, extra = _convert(reference.files[0], form, out, calibration), {}
    if not evaluate:
        return graph, {"gate": {"run": False, "why": "the recipe sets gate.evaluate: false"}, "form": form, **extra}
    return graph, _record(form, gate(reference, graph, form, gate_spec), **extra)


def _record(form: str, comparison: Comparison, **extra) -> dict:
    return {"gate": {"run": True, **comparison.summary()}, "form": form,
            "evaluated_as": EVALUATED_AS.get(form, "the variant itself, with onnxruntime"), **extra}


def _quantization_record(calibration: list[dict], kept: list[str]) -> dict:
    return {"scheme": "symmetric; activations per tensor, weights per output channel",
            "calibration_batches": len(calibration), "layers_kept_fp32": kept}


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


def _convert(reference: Path, form: str, out: Path, calibration: list[dict]) -> Path:
    if form in ("fp16", "bf16"):
        import onnx

        original = onnx.load(str(reference))
        model = _float16(original)
        if form == "bf16":
            _retype_to_bfloat16(model, original)
        onnx.save(model, str(out))
    elif form == "int8-dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # 7-bit weights: on x86 without VNNI (AVX2 only) onnxruntime's u8s8 kernels can saturate with
        # full-range weights (its documented reason for reduce_range), so a variant's accuracy depends
        # on the CPU serving it (MiniLM: served cosine 0.9749 on an AVX2 EPYC; 0.9838 on the machine
        # earlier manifests were built on); with 7 bits: 0.9827 on the EPYC
        quantize_dynamic(str(reference), str(out), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
    elif form in ("int8-qdq", "fp8-qdq"):  # built ungated, as the recipe asked: no fallback to steer
        from nimbuild.precision.quantize import calibrated_layers, quantize

        fmt = form.split("-")[0]
        quantize(reference, out, fmt, *calibrated_layers(reference, calibration, fmt))
    else:
        raise NimbuildError(f"{form} variants are not supported by this version of nimbuild yet")
    return out


def _float16(original):
    from onnx import ModelProto
    from onnxconverter_common import float16

    copy = ModelProto()
    copy.CopyFrom(original)
    model = float16.convert_float_to_float16(copy, keep_io_types=True, op_block_list=FP16_KEEP_FP32)
    _retarget_float_casts(model)
    _restore_fp32_outputs(model, {o.name: o.type.tensor_type.elem_type for o in original.graph.output})
    return model


def _retarget_float_casts(model) -> None:
    """The converter declares every float tensor fp16 but leaves a Cast to float32 that the exporter
    wrote (`.to(torch.float32)` of an integer mask: DeBERTa-v2's and ModernBERT's attention masks)
    casting to float32, so the graph contradicts itself and onnxruntime refuses to load it. Its
    readers were converted to take fp16; the cast is made to produce fp16 as declared."""
    from onnx import TensorProto

    declared = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    for node in model.graph.node:
        if node.op_type != "Cast" or not node.output or declared.get(node.output[0]) != TensorProto.FLOAT16:
            continue
        for attribute in node.attribute:
            if attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.FLOAT16


def _retype_to_bfloat16(model, original) -> None:
    """Turn the fp16 graph into bf16: same casts, bf16 types, weights rounded from the fp32 originals
    (so neither fp16's rounding nor its range limit reaches the bf16 weights)."""
    from onnx import TensorProto, numpy_helper

    originals = {i.name: numpy_helper.to_array(i) for i in original.graph.initializer}
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.BFLOAT16
    for init in model.graph.initializer:
        if init.data_type == TensorProto.FLOAT16:
            source = originals.get(init.name, numpy_helper.to_array(init))
            init.CopyFrom(_bf16_tensor(init.name, source))
    for node in model.graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT16:
                attribute.i = TensorProto.BFLOAT16
            elif attribute.t.data_type == TensorProto.FLOAT16:
                attribute.t.CopyFrom(_bf16_tensor(attribute.t.name, numpy_helper.to_array(attribute.t)))


def _bf16_tensor(name: str, values: np.ndarray):
    import ml_dtypes
    from onnx import TensorProto, helper

    rounded = np.asarray(values, dtype=np.float32).astype(ml_dtypes.bfloat16)
    return helper.make_tensor(name, TensorProto.BFLOAT16, rounded.shape, rounded.view(np.uint16).tobytes(), raw=True)


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


EVALUATED_AS = {
    "bf16": "an fp32 emulation rounding every bf16 value to bf16 (onnxruntime has no CPU bf16 kernels)",
    "int8-qdq": "the Q/DQ graph as written, onnxruntime's graph fusions off",
    "fp8-qdq": "the Q/DQ graph as written, onnxruntime's graph fusions off",
}


@dataclass
class TokenAgreement:
    """A speech encoder-decoder's variant judged on what it serves: its greedy tokens against the
    fp32 graph's, clip by clip, each counted equal up to its first difference (after one, the rest
    of a transcript is decoded from another prefix and says nothing more about the variant)."""

    tokens_min: float
    equal: int = 0
    total: int = 0
    rows: list[str] = field(default_factory=list)
    # text generation: (source's, variant's) perplexity on held text, and the relative difference allowed
    perplexity: tuple[float, float] | None = None
    perplexity_delta_max: float | None = None

    def add(self, what: str, reference: list[int], candidate: list[int]) -> None:
        same = next((i for i, (a, b) in enumerate(zip(reference, candidate)) if a != b), min(len(reference), len(candidate)))
        self.equal += same
        self.total += max(len(reference), len(candidate), 1)
        if reference != candidate:
            self.rows.append(f"{what}: first difference at token {same} of {len(reference)}")

    @property
    def agreement(self) -> float:
        return self.equal / max(self.total, 1)

    @property
    def perplexity_delta(self) -> float | None:
        return None if self.perplexity is None else self.perplexity[1] / self.perplexity[0] - 1

    @property
    def passed(self) -> bool:
        held = self.perplexity is None or abs(self.perplexity_delta) <= self.perplexity_delta_max
        return self.agreement >= self.tokens_min and held

    def describe(self) -> str:
        tokens_ok = self.agreement >= self.tokens_min
        lines = [f"  greedy tokens equal to the reference's: {self.equal}/{self.total} ({self.agreement:.4f}), "
                 f"limit {self.tokens_min:g}: {'ok' if tokens_ok else 'FAILED'}"]
        if self.perplexity is not None:
            ok = abs(self.perplexity_delta) <= self.perplexity_delta_max
            lines.append(f"  perplexity on held text: {self.perplexity[1]:.4g} against the source's {self.perplexity[0]:.4g} "
                         f"({self.perplexity_delta:+.2%}), limit ±{self.perplexity_delta_max:.2%}: {'ok' if ok else 'FAILED'}")
        return "\n".join([*lines, *(f"  {r}" for r in self.rows[:6])])

    def summary(self) -> dict:
        out = {"tokens_min": f"{self.tokens_min:g}", "token_agreement": f"{self.agreement:.4f}",
               "tokens_compared": self.total, "sequences_differing": len(self.rows)}
        if self.perplexity is not None:
            out.update(perplexity_source=f"{self.perplexity[0]:.6g}", perplexity=f"{self.perplexity[1]:.6g}",
                       perplexity_delta=f"{self.perplexity_delta:.4f}", perplexity_delta_max=f"{self.perplexity_delta_max:g}")
        return out


def gate(reference, variant: Path, form: str, spec) -> Comparison | TokenAgreement:
    """Compare the variant with the reference on the evaluation set; refuse it when it misses."""
    from nimbuild.export.reference import open_session, parity_shapes

    precision = form.split("-")[0]
    if hasattr(reference.adapter, "expected_tokens") or hasattr(reference.adapter, "served_tokens"):
        # text generation and encoder-decoder speech: judged on their greedy tokens
        return _token_gate(reference, variant, precision, spec)
    cosine_min = spec.cosine_min if spec and spec.cosine_min is not None else DEFAULT_COSINE[precision]
    max_abs = spec.max_abs if spec and spec.max_abs is not None else float("inf")
    comparison = Comparison(atol=max_abs, rtol=0.0, cosine_min=cosine_min)
    adapter = reference.adapter
    with tempfile.TemporaryDirectory(prefix="nimbuild-gate-") as tmp:
        runnable = _bf16_emulation(variant, Path(tmp)) if form == "bf16" else variant
        var_session = _evaluation_session(runnable, precision, fused=form not in EVALUATED_AS)
        ref_session = open_session(reference.files[0])
        pooling = adapter.runtime_info.get("pooling") if adapter.task == "embedding" else None
        for i, (batch, seq) in enumerate(parity_shapes(reference.inputs[0])):
            feeds = adapter.sample_inputs({"batch": batch, "sequence": seq}, seed=GATE_SEED + i)
            expected = _served(ref_session.run(None, feeds)[0], feeds, pooling, adapter.runtime_info)
            got = _served(_run(var_session, feeds, precision), feeds, pooling, adapter.runtime_info)
            if adapter.scores:
                expected, got = _spread(expected), _spread(got)
            comparison.add(f"{batch}x{seq}", {"served": expected}, {"served": got})
    if not comparison.passed:
        raise GateError(f"the {precision} variant misses its gate (shapes {', '.join(comparison.shapes)}):\n"
                        + comparison.describe())
    return comparison


def _token_gate(reference, variant: Path, precision: str, spec) -> TokenAgreement:
    tokens_min = spec.tokens_min if spec and spec.tokens_min is not None else DEFAULT_TOKENS[precision]
    agreement = TokenAgreement(tokens_min)
    adapter = reference.adapter
    # text generation compares with the source's own tokens (and perplexity on held text), recorded
    # before it was freed; speech with the fp32 graph's tokens
    text = hasattr(adapter, "expected_tokens")
    expected = adapter.expected_tokens() if text else adapter.served_tokens(reference.files[0])
    try:
        got, figures = adapter.served(variant) if text else (adapter.served_tokens(variant), None)
    except Exception as e:  # a variant onnxruntime cannot load or run here
        raise NimbuildError(f"the {precision} variant cannot be evaluated on this machine ({first_line(e)}); to build "
                            f"it without its gate, set precisions.{precision}.gate.evaluate: false in the recipe") from None
    if figures:
        agreement.perplexity = figures
        agreement.perplexity_delta_max = (spec.perplexity_delta_max if spec and spec.perplexity_delta_max is not None
                                          else DEFAULT_PERPLEXITY_DELTA.get(precision, 0.0))
    for what in expected:
        agreement.add(what, expected[what], got[what])
    if not agreement.passed:
        raise GateError(f"the {precision} variant misses its gate on what it serves:\n" + agreement.describe())
    return agreement


def _evaluation_session(graph: Path, precision: str, fused: bool):
    """onnxruntime on the variant (unfused: Q/DQ and rounding exactly as written, not as a CPU kernel
    would fuse them); a variant it cannot load is refused unless the recipe opts out."""
    from nimbuild.errors import ExportError
    from nimbuild.export.reference import open_session

    try:
        return open_session(graph, fused=fused)
    except ExportError as e:
        raise NimbuildError(
            f"the {precision} variant cannot be evaluated on this machine ({e}); "
            f"to build it without its gate, set precisions.{precision}.gate.evaluate: false in the recipe "
            "(its profile will record that the gate did not run)") from None


def _run(session, feeds: dict, precision: str) -> np.ndarray:
    try:
        return session.run(None, feeds)[0]
    except Exception as e:
        raise NimbuildError(f"the {precision} variant cannot be evaluated on this machine ({first_line(e)}); "
                            f"set precisions.{precision}.gate.evaluate: false to build it ungated") from None


def _bf16_emulation(variant: Path, tmp: Path) -> Path:
    """The bf16 graph with fp32 tensors, every bf16 value rounded to bf16 through a Cast pair."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(onnx.load(str(variant)))
    bf16_values = {v.name for v in list(model.graph.value_info) + list(model.graph.output)
                   if v.type.tensor_type.elem_type == TensorProto.BFLOAT16}
    for init in model.graph.initializer:
        if init.data_type == TensorProto.BFLOAT16:  # bf16 values are exact in fp32
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name))
    nodes = []
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.t.data_type == TensorProto.BFLOAT16:
                attribute.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attribute.t).astype(np.float32),
                                                             attribute.t.name))
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.BFLOAT16:
                attribute.i = TensorProto.FLOAT
        nodes.append(node)
        for i, output in enumerate(node.output):
            if output in bf16_values:  # compute in fp32, then round the result as bf16 storage would
                exact = output + "_fp32"
                node.output[i] = exact
                nodes.append(helper.make_node("Cast", [exact], [output + "_bf16"], to=TensorProto.BFLOAT16))
                nodes.append(helper.make_node("Cast", [output + "_bf16"], [output], to=TensorProto.FLOAT))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.value_info[:]
    path = tmp / "bf16-emulation.onnx"
    onnx.save(model, str(path))
    return path


def calibration_batches(reference, checkpoint, spec, data: Path | None) -> list[dict]:
    """Calibration inputs: the recipe's texts (`data`, one per line) through the checkpoint's
    tokenizer, or seeded synthetic token batches at the recipe's opt sequence length."""
    samples = spec.calibration.samples if spec and spec.calibration else 64
    adapter = reference.adapter
    if data is not None:
        return _tokenized(checkpoint, adapter, _calibration_texts(data)[:samples], reference.inputs[0])
    seq = min(reference.inputs[0].dims[list(reference.inputs[0].dims)[1]].opt, 128)
    return [adapter.sample_inputs({"batch": min(CALIBRATION_BATCH, samples - start), "sequence": seq},
                                  seed=CALIBRATION_SEED + start)
            for start in range(0, samples, CALIBRATION_BATCH)]


def _calibration_texts(path: Path) -> list[str]:
    from nimbuild.util.files import read_user_text

    texts = [line.strip() for line in read_user_text(path, "calibration data", NimbuildError).splitlines() if line.strip()]
    if not texts:
        raise NimbuildError(f"{path}: calibration data holds no text (one sample per line)")
    return texts


def _tokenized(checkpoint, adapter, texts: list[str], spec) -> list[dict]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint.path, local_files_only=True)
    max_length = spec.dims[list(spec.dims)[1]].max
    batches = []
    for start in range(0, len(texts), CALIBRATION_BATCH):
        encoded = tokenizer(texts[start:start + CALIBRATION_BATCH], padding=True, truncation=True,
                            max_length=max_length, return_tensors="np")
        feeds = {"token_type_ids": np.zeros_like(encoded["input_ids"]), **encoded}
        batches.append({name: np.asarray(feeds[name], dtype=np.int64) for name in adapter.input_names})
    return batches


def _spread(scores: np.ndarray) -> np.ndarray:
    """A batch's scores as one row, centred: the cosine of two such rows is their Pearson
    correlation, so a variant passes when it orders and spaces the batch's pairs as the reference
    does (a reranker's answer), however each score's sign falls. A batch of one is compared on its
    absolute error alone (the recipe's `max_abs`)."""
    row = scores.reshape(1, -1).astype(np.float64)
    return row - row.mean()


def _served(output: np.ndarray, feeds: dict, pooling: str | None, info: dict) -> np.ndarray:
    """What a client receives: for an embedding model, the pooled (and normalised) vector."""
    from nimbuild.serving.pooling import pool

    output = output.astype(np.float64)
    if pooling is None:
        return output
    return pool(output, feeds["attention_mask"], pooling, bool(info.get("normalize")))
