"""Triton Python-backend model: a generic embedding profile's ONNX graph through onnxruntime.

Triton's dynamic batcher hands over several requests at once, each [n_i, seq_i] token ids; they
are padded to one [sum n_i, max seq_i] batch, run in one onnxruntime call, pooled and normalised
as the profile's model_info.json records (sentence-transformers' pooling), and split back.
Runs inside the Triton Python backend stub, which provides triton_python_backend_utils.
"""

import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        workspace = Path(config["parameters"]["workspace"]["string_value"])
        info = json.loads((workspace / "model_info.json").read_text())
        self.inputs = [i["name"] for i in info["inputs"]]
        runtime = info.get("runtime") or {}
        self.pooling = runtime.get("pooling", "mean")
        self.normalize = bool(runtime.get("normalize"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("NIMBUILD_ORT_THREADS", "0"))
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(workspace / info["graph"]), options, providers=providers)
        self.output = info["outputs"][0]["name"]

    def execute(self, requests):
        batches = [{name: pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs}
                   for r in requests]
        longest = max(b["input_ids"].shape[1] for b in batches)
        feeds = {name: np.concatenate([_pad(b[name], longest) for b in batches]) for name in self.inputs}
        hidden = self.session.run([self.output], feeds)[0]
        embeddings = _pool(hidden, feeds["attention_mask"], self.pooling)
        if self.normalize:
            embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        responses, start = [], 0
        for b in batches:
            count = b["input_ids"].shape[0]
            out = pb_utils.Tensor("embeddings", embeddings[start:start + count].astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start += count
        return responses


def _pad(array, length):
    return np.pad(array, ((0, 0), (0, length - array.shape[1]))) if array.shape[1] < length else array


def _pool(hidden, mask, mode):
    mask = mask[..., None].astype(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0].copy()
    if mode == "max":
        return np.where(mask > 0, hidden, -np.inf).max(axis=1)
    if mode == "last":
        last = mask[..., 0].sum(axis=1).astype(np.int64) - 1
        return hidden[np.arange(hidden.shape[0]), last].copy()
    return (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
