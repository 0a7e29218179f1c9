"""What each task exports: the model class, its inputs and outputs, test inputs, runtime metadata.

A task adapter keeps task knowledge in one place so the exporter and the parity check stay generic.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from nimbuild.errors import ExportError, first_line
from nimbuild.sources.hf import HFCheckpoint

# sentence-transformers pooling modes this project's runtime implements.
_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "last",
}


@dataclass
class TaskAdapter:
    task: str
    input_names: list[str]
    output_names: list[str]
    module: Any  # a torch.nn.Module whose forward(*inputs) takes input_names in order
    vocab_size: int
    runtime_info: dict[str, Any]
    # the output is one score per row (ranking): precision gates judge the scores' order and spread
    # over the batch (their correlation) rather than each row's own direction
    scores: bool = False
    pairs: bool = False  # the inputs are text pairs: test inputs mark a second segment in token types

    def sample_inputs(self, shape: dict[str, int], seed: int) -> dict[str, np.ndarray]:
        """Seeded inputs for one (batch, sequence) shape, with padding so masks matter."""
        rng = np.random.default_rng(seed)
        batch, seq = shape["batch"], shape["sequence"]
        ids = rng.integers(0, self.vocab_size, size=(batch, seq), dtype=np.int64)
        lengths = rng.integers(max(1, seq // 2), seq + 1, size=batch)
        lengths[0] = seq  # one full row, so no shape is tested only padded
        mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
        types = np.zeros_like(ids)
        if self.pairs:  # a query-passage pair: the passage's tokens are the second segment
            types = ((np.arange(seq)[None, :] >= lengths[:, None] // 2) & (mask == 1)).astype(np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: feeds[name] for name in self.input_names}


def load_task(task: str, checkpoint: HFCheckpoint) -> TaskAdapter:
    """Encoder tasks; decoder LMs (text-generation) have their own exporter, nimbuild.export.llm."""
    loaders: dict[str, Callable[[HFCheckpoint], TaskAdapter]] = {
        "embedding": _embedding,
        "ranking": _ranking,
    }
    return loaders[task](checkpoint)


def quiet_libraries() -> None:
    """Keep library chatter (weight-loading bars, optional-dependency notes) out of our output."""
    import logging

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _load(auto_class_name: str, checkpoint: HFCheckpoint, own_dtype: bool = False):
    """The checkpoint's model in fp32, or (`own_dtype`) in the dtype its weights are stored in."""
    import torch
    import transformers

    quiet_libraries()
    auto_class = getattr(transformers, auto_class_name)
    use_safetensors = any(checkpoint.path.glob("*.safetensors")) or None
    try:
        model = auto_class.from_pretrained(
            checkpoint.path, dtype="auto" if own_dtype else torch.float32, use_safetensors=use_safetensors,
            local_files_only=True,
        )
    except Exception as e:  # transformers raises many types for a bad checkpoint; all are user errors here
        raise ExportError(f"{checkpoint.path}: cannot load as {auto_class_name}: {first_line(e)}") from None
    return model.eval()


def _token_inputs(checkpoint: HFCheckpoint, model, types: int) -> list[str]:
    """The graph's token inputs: ids, mask, and token types where the model has at least `types`."""
    names = ["input_ids", "attention_mask"]
    if checkpoint.config.get("type_vocab_size", 0) >= types and _forward_accepts(model, "token_type_ids"):
        names.append("token_type_ids")
    return names


def _forward_accepts(model, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


def _embedding(checkpoint: HFCheckpoint) -> TaskAdapter:
    import torch

    model = _load("AutoModel", checkpoint)
    names = _token_inputs(checkpoint, model, types=1)

    class EncoderHidden(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, *inputs):
            return self.encoder(**dict(zip(names, inputs))).last_hidden_state

    return TaskAdapter(
        task="embedding", input_names=names, output_names=["last_hidden_state"],
        module=EncoderHidden(model), vocab_size=int(checkpoint.config["vocab_size"]),
        runtime_info=_pooling_info(checkpoint),
    )


def _ranking(checkpoint: HFCheckpoint) -> TaskAdapter:
    """A cross-encoder: a query-passage pair in, one relevance logit out (`logits [batch, 1]`)."""
    import torch

    labels = ranking_labels(checkpoint.config)
    if labels != 1:
        raise ExportError(f"{checkpoint.path}: ranking takes a cross-encoder with one label (a relevance score); "
                          f"this classifier has {labels}")
    model = _load("AutoModelForSequenceClassification", checkpoint)
    # a pair's segments as token types only where the model has two (XLM-R has one: no input)
    names = _token_inputs(checkpoint, model, types=2)

    class PairScore(torch.nn.Module):
        def __init__(self, classifier):
            super().__init__()
            self.classifier = classifier

        def forward(self, *inputs):
            return self.classifier(**dict(zip(names, inputs))).logits

    st_config = checkpoint.read_json("sentence_bert_config.json") or {}
    max_len = st_config.get("max_seq_length") or checkpoint.config.get("max_position_embeddings")
    return TaskAdapter(task="ranking", input_names=names, output_names=["logits"], module=PairScore(model),
                       vocab_size=int(checkpoint.config["vocab_size"]),
                       runtime_info={"max_sequence_length": int(max_len) if max_len else None}, scores=True,
                       pairs=True)


def ranking_labels(config: dict) -> int:
    """How many labels a sequence classifier's config gives it (transformers' rule: id2label, else
    num_labels, else 2)."""
    if isinstance(config.get("id2label"), dict):
        return len(config["id2label"])
    return int(config.get("num_labels") or 2)


def _pooling_info(checkpoint: HFCheckpoint) -> dict[str, Any]:
    """Read sentence-transformers' pooling and normalisation, which the runtime applies after the graph."""
    modules = checkpoint.read_json("modules.json") or []
    pooling_dir = next((m.get("path") for m in modules if str(m.get("type", "")).endswith(".Pooling")), None)
    normalize = any(str(m.get("type", "")).endswith(".Normalize") for m in modules)
    pooling = "mean"  # a plain encoder without sentence-transformers config: mean pooling, the common default
    if pooling_dir:
        config = checkpoint.read_json(f"{pooling_dir}/config.json") or {}
        chosen = [mode for key, mode in _POOLING_KEYS.items() if config.get(key)]
        unsupported = [k for k, v in config.items() if k.startswith("pooling_mode_") and v and k not in _POOLING_KEYS]
        if unsupported or len(chosen) != 1:
            raise ExportError(
                f"{checkpoint.path}/{pooling_dir}/config.json: unsupported pooling "
                f"{', '.join(unsupported) or 'combination'}; nimbuild supports exactly one of mean, cls, max, last"
            )
        pooling = chosen[0]
    st_config = checkpoint.read_json("sentence_bert_config.json") or {}
    max_len = st_config.get("max_seq_length") or checkpoint.config.get("max_position_embeddings")
    info = {"pooling": pooling, "normalize": normalize, "max_sequence_length": int(max_len) if max_len else None}
    if prompts := _input_type_prompts(checkpoint):
        info["prompts"] = prompts
    return info


def _input_type_prompts(checkpoint: HFCheckpoint) -> dict[str, str]:
    """The text sentence-transformers puts before a query and before a passage (its config's
    `prompts`; `document` is a passage), by NIM's input_type names."""
    config = checkpoint.read_json("config_sentence_transformers.json") or {}
    prompts = config.get("prompts") if isinstance(config.get("prompts"), dict) else {}
    found = {"query": prompts.get("query"), "passage": prompts.get("passage", prompts.get("document"))}
    return {kind: text for kind, text in found.items() if isinstance(text, str)}
