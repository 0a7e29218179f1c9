"""Triton Python-backend model for embedding profiles (the `stage` parameter):

embed  Triton's dynamic batcher hands over several requests at once, each [n_i, seq_i] token ids;
       they are padded to one [sum n_i, max seq_i] batch, run through the core network in one call
       (the `runner`: onnxruntime or a TensorRT-RTX engine), pooled and normalised as the profile's
       model_info.json records (sentence-transformers' pooling), and split back.
pool   the same pooling, when the core runs as its own model on a native backend (an ensemble
       step before this one): hidden states and attention masks in, embeddings out.

Everything it reads lies in its own version directory (the repository is self-contained), and the
pooling code beside it is the one the precision gate measured.
"""

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the helpers copied beside this file, whatever else is installed

from nimbuild.serving.pooling import pool  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        info = json.loads((HERE / "model_info.json").read_text())
        self.inputs = [i["name"] for i in info["inputs"]]
        runtime = info.get("runtime") or {}
        self.pooling = runtime.get("pooling", "mean")
        self.normalize = bool(runtime.get("normalize"))
        self.output = info["outputs"][0]["name"]
        self.stage = params["stage"]
        if self.stage == "embed":
            from runners import open_runner

            self.core = open_runner(params["runner"], HERE / params["core"], int(args.get("model_instance_device_id") or 0))

    def execute(self, requests):
        if self.stage == "pool":
            names = [self.output, "attention_mask"]
        else:
            names = self.inputs
        batches = [{name: pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in names} for r in requests]
        longest = max(b["attention_mask"].shape[1] for b in batches)
        mask = np.concatenate([_pad(b["attention_mask"], longest) for b in batches])
        if self.stage == "pool":
            hidden = np.concatenate([_pad(b[self.output], longest) for b in batches])
        else:
            feeds = {name: np.concatenate([_pad(b[name], longest) for b in batches]) for name in self.inputs}
            hidden = self.core.run([self.output], feeds)[0]
        embeddings = pool(hidden.astype(np.float32), mask, self.pooling, self.normalize)
        responses, start = [], 0
        for b in batches:
            count = b["attention_mask"].shape[0]
            out = pb_utils.Tensor("embeddings", embeddings[start:start + count].astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start += count
        return responses


def _pad(array, length):
    """Pad the sequence axis (axis 1) with zeros up to `length`."""
    if array.shape[1] >= length:
        return array
    widths = [(0, 0)] * array.ndim
    widths[1] = (0, length - array.shape[1])
    return np.pad(array, widths)
