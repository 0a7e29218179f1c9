"""Triton Python-backend model: a generic embedding profile's ONNX graph through onnxruntime.

Triton's dynamic batcher hands over several requests at once, each [n_i, seq_i] token ids; they
are padded to one [sum n_i, max seq_i] batch, run in one onnxruntime call, pooled and normalised
as the profile's model_info.json records (sentence-transformers' pooling), and split back.
Runs inside the Triton Python backend stub, which provides triton_python_backend_utils; the stub's
interpreter is the runtime's own, so nimbuild is importable.
"""

import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from nimbuild.pooling import pool  # the same pooling the precision gate measured


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
        embeddings = pool(hidden, feeds["attention_mask"], self.pooling, self.normalize)
        responses, start = [], 0
        for b in batches:
            count = b["input_ids"].shape[0]
            out = pb_utils.Tensor("embeddings", embeddings[start:start + count].astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start += count
        return responses


def _pad(array, length):
    return np.pad(array, ((0, 0), (0, length - array.shape[1]))) if array.shape[1] < length else array

