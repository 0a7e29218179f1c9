"""TensorRT-LLM engines for decoder LMs, through the installed `tensorrt_llm`'s LLM API.

TensorRT-LLM builds on a GPU (of the target's compute capability, with tp x pp of them) and
quantises from the checkpoint itself (its own ModelOpt calibration), so these profiles are built
from the source checkpoint, not from the reference ONNX. The workspace is the saved engine
directory (`engine/`: config.json and one rank<N>.engine per GPU), the tokenizer, and model_info.
Where no GPU or no `tensorrt_llm` is present the cell is skipped with the reason, as datacenter
TensorRT cells are.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from nimbuild.errors import NimbuildError, first_line

LLM_PRECISIONS = ("fp16", "bf16", "fp8", "int8", "int4_awq")
# QuantAlgo names in tensorrt_llm.quantization; fp16/bf16 are dtypes, not quantisation
_QUANT_ALGO = {"fp8": "FP8", "int8": "W8A16", "int4_awq": "W4A16_AWQ"}
_DTYPE = {"fp16": "float16", "bf16": "bfloat16", "fp8": "float16", "int8": "float16", "int4_awq": "float16"}


def tensorrt_llm_version() -> str | None:
    from nimbuild.profiles.system import runtime_version

    return runtime_version("tensorrt_llm")


def why_not_buildable(cc: str, gpus_needed: int) -> str | None:
    """None when this machine can build the cell; otherwise the reason."""
    from nimbuild.profiles.system import detect_system

    needs = f"needs {gpus_needed} GPU(s) of compute capability {cc}"
    gpus = detect_system().gpus
    if not gpus:
        return f"{needs} (this machine has none; TensorRT-LLM builds on the target GPU)"
    matching = [g for g in gpus if g.compute_capability == cc]
    if len(matching) < gpus_needed:
        return f"{needs}; this machine has {len(matching)}"
    if importlib.util.find_spec("tensorrt_llm") is None:
        return f"{needs} and tensorrt_llm installed (an NGC TensorRT-LLM container, or pip install tensorrt_llm)"
    return None


def build_llm_engine(checkpoint_dir: Path, out: Path, precision: str, tp: int, pp: int, lora: bool,
                     max_batch: int, max_sequence: int) -> dict:
    """Build and save the engine; return the build record."""
    try:  # TensorRT-LLM 1.x keeps the engine-building LLM here; 0.x exports it at the top level
        from tensorrt_llm._tensorrt_engine import LLM
    except ImportError:
        from tensorrt_llm import LLM
    from tensorrt_llm import BuildConfig

    kwargs = {}
    if precision in _QUANT_ALGO:
        from tensorrt_llm.llmapi import QuantConfig
        from tensorrt_llm.quantization import QuantAlgo

        kwargs["quant_config"] = QuantConfig(quant_algo=getattr(QuantAlgo, _QUANT_ALGO[precision]))
    if lora:
        from tensorrt_llm.lora_manager import LoraConfig

        kwargs["enable_lora"] = True
        kwargs["lora_config"] = LoraConfig(lora_target_modules=["attn_q", "attn_k", "attn_v"], max_lora_rank=64)
    build = BuildConfig(max_batch_size=max_batch, max_seq_len=max_sequence, max_input_len=max_sequence)
    try:
        llm = LLM(model=str(checkpoint_dir), dtype=_DTYPE[precision], tensor_parallel_size=tp,
                  pipeline_parallel_size=pp, build_config=build, **kwargs)
        llm.save(str(out))
        llm.shutdown()
    except Exception as e:  # tensorrt_llm raises many types; each means this engine cannot be built here
        raise NimbuildError(f"TensorRT-LLM could not build the {precision} engine: {first_line(e)}") from None
    return {"builder": "tensorrt_llm", "version": tensorrt_llm_version() or "", "tp": tp, "pp": pp,
            "max_batch_size": max_batch, "max_seq_len": max_sequence}


def make_llm_engine_workspace(recipe, checkpoint, reference, variant, workspace: Path) -> dict:
    from nimbuild.targets.generic import _write_common, model_info

    target = recipe.targets[variant.target_index]
    batch, context = list(reference.inputs[0].dims.values())
    workspace.mkdir(parents=True)
    record = build_llm_engine(checkpoint.path, workspace / "engine", variant.precision, target.tp, target.pp,
                              target.lora, batch.max, context.max)
    from nimbuild.export.families import family

    record["converter"] = family(checkpoint.config).trtllm  # planning refused the families without one
    info = {**model_info(recipe, reference, variant.precision), "graph": None, "engine": "engine",
            "engine_builder": record, "llm_engine": dict(variant.tags)["llm_engine"]}
    _write_common(recipe, checkpoint, info, workspace)  # tokenizer files and model_info.json, as every profile
    return record
