"""Triton Python model for translation profiles: one text's source tokens in, its translation's
tokens out.

    input_ids   int64 [tokens]   the source, ending with end-of-sequence (nimbuild/serving/translation_text.py)
    max_tokens  int32 [1]        the most tokens the translation may have (0: the profile's limit)
    output_ids  int64 [tokens]   the translation, its end-of-sequence token included when reached

The requests of one execute are the texts the dynamic batcher gathered: their sources are encoded
as one right-padded batch, and greedy decoding runs them together, each leaving the batch when it
ends (nimbuild/serving/seq2seq.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the helpers copied beside this file, whatever else is installed

from nimbuild.serving.seq2seq import TranslationGraphs, greedy, greedy_settings  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        from runners import open_runner

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.runtime = json.loads((HERE / "model_info.json").read_text())["runtime"]
        self.max_batch = max(1, int(config.get("max_batch_size") or 1))
        device = int(args.get("model_instance_device_id") or 0)
        encoder = open_runner(params["runner"], HERE / params["core"], device)
        # the decoder graph is on onnxruntime whatever runs the encoder: the loop feeds it growing shapes
        decoder = open_runner("onnxruntime", HERE / self.runtime["decoder"]).session
        self.graphs = TranslationGraphs(encoder, decoder)
        self.vocabulary = int(decoder.get_outputs()[0].shape[-1])
        self.settings = greedy_settings(self.runtime)

    def execute(self, requests):
        rows, budgets, responses = [], [], [None] * len(requests)
        for i, request in enumerate(requests):
            ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy().reshape(-1).astype(np.int64)
            wanted = int(pb_utils.get_input_tensor_by_name(request, "max_tokens").as_numpy().reshape(-1)[0])
            problem = self._problem(ids, wanted)
            if problem:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(problem))
            else:
                rows.append((i, ids.tolist()))
                budgets.append(min(wanted, self.runtime["max_output_tokens"]) or self.runtime["max_output_tokens"])
        for start in range(0, len(rows), self.max_batch):
            chunk = rows[start:start + self.max_batch]
            outputs = greedy(self.graphs, [r for _, r in chunk], budgets[start:start + self.max_batch], **self.settings)
            for (i, _), tokens in zip(chunk, outputs):
                out = np.asarray(tokens, dtype=np.int64)[None]
                responses[i] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("output_ids", out)])
        return responses

    def _problem(self, ids: np.ndarray, wanted: int) -> str | None:
        limit = int(self.runtime["max_source_tokens"])
        if not 1 <= len(ids) <= limit:
            return f"a source has 1 to {limit} tokens; this one has {len(ids)}"
        if ids.min() < 0 or ids.max() >= self.vocabulary:
            return f"token ids are 0 to {self.vocabulary - 1}"
        if wanted < 0:
            return "max_tokens must not be negative"
        return None
