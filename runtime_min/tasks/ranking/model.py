"""Triton Python-backend model for ranking profiles: the dynamic batcher hands over several
requests at once, each [pairs_i, tokens_i] token ids; they are padded to one [sum pairs_i, max
tokens_i] batch, run through the core network in one call (the `runner`), and each request gets
its pairs' logits back, [pairs_i, 1]."""

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the helpers copied beside this file, whatever else is installed


class TritonPythonModel:
    def initialize(self, args):
        from runners import open_runner

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        info = json.loads((HERE / "model_info.json").read_text())
        self.inputs = [i["name"] for i in info["inputs"]]
        self.output = info["outputs"][0]["name"]
        self.core = open_runner(params["runner"], HERE / params["core"], int(args.get("model_instance_device_id") or 0))

    def execute(self, requests):
        batches = [{name: pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs} for r in requests]
        longest = max(b["attention_mask"].shape[1] for b in batches)
        feeds = {name: np.concatenate([_pad(b[name], longest) for b in batches]).astype(np.int64) for name in self.inputs}
        logits = self.core.run([self.output], feeds)[0].astype(np.float32).reshape(-1, 1)
        responses, start = [], 0
        for b in batches:
            count = b["attention_mask"].shape[0]
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("logits", logits[start:start + count])]))
            start += count
        return responses


def _pad(array, length):
    """Pad the token axis with zeros (padding, masked out) up to `length`."""
    if array.shape[1] >= length:
        return array
    return np.pad(array, [(0, 0), (0, length - array.shape[1])])
