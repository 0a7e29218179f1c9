"""Triton Python-backend model (decoupled) for TensorRT-LLM profiles: the engine directory runs
through the TensorRT-LLM LLM API, which does its own in-flight batching and KV-cache paging.

Its inputs and outputs are the generic model's (tasks/llm/model.py): input_ids, max_tokens,
temperature, top_p, seed, stop in; one response per new token with token_id, its text delta and,
on the last, finish_reason. So `/v1/completions` and `/v1/chat/completions` serve it unchanged.
One asyncio loop in a worker thread drives every request's stream; a cancelled request (the client
went away) is aborted in the engine, and so is every one once a `stop_all` request (the runtime
stopping) has come: that request is answered when none is left.
"""

import asyncio
import json
import threading
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

HERE = Path(__file__).resolve().parent
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class TritonPythonModel:
    def initialize(self, args):
        try:  # TensorRT-LLM 1.x loads saved engines through the TensorRT LLM class; 0.x exports it at the top
            from tensorrt_llm._tensorrt_engine import LLM
        except ImportError:
            from tensorrt_llm import LLM

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.llm = LLM(model=str(HERE / params["core"]), tokenizer=str(HERE / "tokenizer"))
        self.loop = asyncio.new_event_loop()
        self.worker = threading.Thread(target=self.loop.run_forever, name="trtllm", daemon=True)
        self.worker.start()
        self.stopping_all = threading.Event()
        self.live = set()  # the streams' tasks, touched only on self.loop

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            if _scalar(request, "stop_all", False):
                self.stopping_all.set()
                asyncio.run_coroutine_threadsafe(self._stop_all(sender), self.loop)
                continue
            if self.stopping_all.is_set():
                sender.send(_error(STOPPING), flags=FINAL)
                continue
            try:
                ids, sampling = _request(request)
            except ValueError as e:
                sender.send(_error(str(e)), flags=FINAL)
                continue
            asyncio.run_coroutine_threadsafe(self._tracked(self._stream(request, sender, ids, sampling)), self.loop)
        return None

    async def _tracked(self, work):
        task = asyncio.current_task()
        self.live.add(task)
        try:
            await work
        finally:
            self.live.discard(task)

    async def _stop_all(self, sender):
        # each stream sees stopping_all at its next output and aborts; a stuck one is not waited for
        if self.live:
            await asyncio.wait(list(self.live), timeout=5)
        sender.send(_response(-1, "", "stopped"), flags=FINAL)  # outputs: a bare final flag reaches no client

    async def _stream(self, request, sender, ids, sampling):
        sent = 0
        try:
            stream = self.llm.generate_async(ids, sampling_params=sampling, streaming=True)
            async for output in stream:
                if request.is_cancelled() or self.stopping_all.is_set():
                    stream.abort()
                    if self.stopping_all.is_set():
                        sender.send(_error(STOPPING), flags=FINAL)
                    else:
                        sender.send(flags=FINAL)
                    return
                piece = output.outputs[0]
                new = piece.token_ids[sent:]
                finish = piece.finish_reason if output.finished else None
                for n, token in enumerate(new):
                    last = finish is not None and n == len(new) - 1
                    text = piece.text_diff if n == len(new) - 1 else ""
                    sender.send(_response(token, text, _finish(finish) if last else ""), flags=FINAL if last else 0)
                sent = len(piece.token_ids)
                if output.finished and not new:
                    sender.send(_response(-1, "", _finish(finish)), flags=FINAL)
        except Exception as e:  # one failed request, not the model
            sender.send(_error(f"generation failed: {e}"), flags=FINAL)

    def finalize(self):
        self.llm.shutdown()
        self.loop.call_soon_threadsafe(self.loop.stop)


STOPPING = "the server is stopping"


# the start of an error that is the request's fault (stream.py answers it with a 400); model.py's too
INVALID = "invalid request: "


def _error(message):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


def _scalar(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else tensor.as_numpy().reshape(-1)[0].item()


def _request(request):
    from tensorrt_llm import SamplingParams

    ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy().reshape(-1).astype(np.int64).tolist()
    if not ids:
        raise ValueError(f"{INVALID}input_ids is empty")
    stop = pb_utils.get_input_tensor_by_name(request, "stop")
    stops = [s.decode() if isinstance(s, bytes) else str(s) for s in stop.as_numpy().reshape(-1)] if stop else None
    seed = _scalar(request, "seed", None)
    max_tokens = int(_scalar(request, "max_tokens", 16))
    if max_tokens < 1:
        raise ValueError(f"{INVALID}max_tokens must be at least 1")
    temperature = float(_scalar(request, "temperature", 0.0))
    controls = _controls(request)
    top_k = controls.pop("top_k", 0)
    return ids, SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=float(_scalar(request, "top_p", 1.0)),
                               top_k=1 if temperature == 0 else (top_k or None), stop=stops,
                               seed=None if seed is None or seed < 0 else int(seed),
                               ignore_eos=bool(_scalar(request, "ignore_eos", False)), **controls)


# the sampling controls TensorRT-LLM's SamplingParams takes under the same names
SAME_NAMES = ("top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "min_tokens",
              "stop_token_ids")


def _controls(request):
    """The `sampling` input's JSON as TensorRT-LLM SamplingParams arguments. logit_bias and logprobs
    are refused on these profiles (not built here: no GPU to prove them against transformers),
    never dropped."""
    import json

    tensor = pb_utils.get_input_tensor_by_name(request, "sampling")
    given = json.loads(tensor.as_numpy().reshape(-1)[0]) if tensor is not None else {}
    refused = (["logit_bias"] if given.get("logit_bias") else []) + (["logprobs"] if given.get("logprobs") is not None else []) \
        + [name for name in given if name not in SAME_NAMES + ("logit_bias", "logprobs")]
    if refused:
        name = "structured output and required tool calls" if refused[0] == "grammar" else refused[0]
        raise ValueError(f"{INVALID}{name} is not implemented for TensorRT-LLM profiles by this runtime")
    return {name: given[name] for name in SAME_NAMES if name in given and given[name] not in (None, [])}


def _finish(reason) -> str:
    return "length" if reason == "length" else "stop"


def _response(token, text, finish):
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor("token_id", np.array([[token]], np.int64)),
        pb_utils.Tensor("text", np.array([[text.encode("utf-8")]], np.object_)),
        pb_utils.Tensor("finish_reason", np.array([[finish.encode()]], np.object_)),
    ])
