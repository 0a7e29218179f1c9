"""Triton Python-backend model (decoupled): token-by-token generation over a generic
text-generation profile's KV-cache graph, with continuous batching across requests.

`execute` only queues: each request becomes a nimbuild.serving.generation.Sequence whose context is the
request's response sender. One worker thread owns the onnxruntime session and the Generator; each
step advances every running sequence by one token in one batched graph call and sends each token
as its own response (text delta, token id, and on the last one the finish reason, flagged final).
Cancelled requests (the client went away) are dropped between steps. A request with `stop_all`
set is the runtime stopping (runtime_min.tasks.llm.stream.stop_all): every sequence, running
or queued, ends with an error response and later ones are refused, so Triton has nothing in flight
when it is told to exit, whether or not it saw the clients' hang-ups.

Custom metrics in Triton's /metrics: nimbuild_llm_step_rows_total / nimbuild_llm_steps_total is the
mean number of sequences per graph call, nimbuild_llm_step_rows_max the largest batch so far.
"""

import json
import queue
import sys
import threading
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the helpers copied beside this file, whatever else is installed

from nimbuild.serving.constrained import GrammarError, Masks  # noqa: E402
from nimbuild.serving.generation import DecoderGraph, Generator, SamplingParams, Sequence  # noqa: E402
from nimbuild.serving.lora import AdapterBank  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort
        from runners import session_options
        from tokenizers import Tokenizer

        config = json.loads(args["model_config"])
        self.name = config["name"]
        workspace = HERE
        info = json.loads((workspace / "model_info.json").read_text())
        runtime = info.get("runtime") or {}
        session = ort.InferenceSession(str(workspace / info["graph"]), session_options(),
                                       providers=["CPUExecutionProvider"])
        tokenizer = Tokenizer.from_file(str(workspace / "tokenizer" / "tokenizer.json"))
        self.masks = None  # llguidance's view of the tokenizer, made at the first request with a grammar
        self.masks_for = lambda: Masks((workspace / "tokenizer" / "tokenizer.json").read_text(encoding="utf-8"),
                                       _vocab(session, tokenizer), runtime.get("eos_token_ids") or [])
        self.generator = Generator(
            DecoderGraph(session), max_batch=int(config.get("max_batch_size") or 1),
            max_context=int(runtime["max_sequence_length"]), eos_ids=runtime.get("eos_token_ids") or [],
            decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
            recompute_at=runtime.get("recompute_cache_at"), constrain=self._constraint,
            adapters=_adapter_bank(runtime.get("lora")),
        )
        self.incoming = queue.Queue()
        self.stopping = threading.Event()
        self.stopping_all = threading.Event()  # set by a stop_all request: no new sequence is taken
        self._metrics()
        self.worker = threading.Thread(target=self._loop, name="generation", daemon=True)
        self.worker.start()

    def _constraint(self, grammar):
        """A sequence's grammar state (execute's thread makes it, so a grammar that fails is that
        request's error, not the loop's)."""
        if self.masks is None:
            self.masks = self.masks_for()
        try:
            return self.masks.constraint(grammar)
        except GrammarError as e:
            raise ValueError(f"{INVALID}the grammar is refused: {e}") from None

    def _metrics(self):
        labels = {"model": self.name}
        counter, gauge = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.GAUGE
        # the families must outlive their metrics, so they are kept too
        self.families = [
            pb_utils.MetricFamily("nimbuild_llm_step_rows_total", "Sequences advanced, summed over graph calls", counter),
            pb_utils.MetricFamily("nimbuild_llm_steps_total", "Batched graph calls (prefill or decode)", counter),
            pb_utils.MetricFamily("nimbuild_llm_step_rows_max", "Most sequences in one graph call", gauge),
        ]
        self.rows_total, self.steps_total, self.rows_max = (f.Metric(labels=labels) for f in self.families)
        self.largest = 0

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            if _scalar(request, "stop_all", False):
                self.stopping_all.set()
                self.incoming.put(_StopAll(sender))  # the loop thread owns the generator
                continue
            if self.stopping_all.is_set():
                sender.send(_error(STOPPING), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            try:
                params = _params(request)
                constraint = self._constraint(params.grammar) if params.grammar else None
                self.incoming.put(Sequence(_ids(request), params, context=(request, sender), constraint=constraint))
            except ValueError as e:
                sender.send(_error(str(e)), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    def _loop(self):
        generator = self.generator
        while not self.stopping.is_set():
            try:
                self._admit(block=not generator.busy)
                for sequence in generator.cancel(lambda s: s.context[0].is_cancelled()):
                    # the final flag releases the request: without it Triton waits for it at shutdown
                    sequence.context[1].send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                if not generator.busy:
                    continue
                events = generator.step()
                self._count(generator.batch_sizes)
                generator.batch_sizes.clear()  # counted; kept, it would grow for as long as the server runs
                for event in events:
                    _, sender = event.sequence.context
                    flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if event.finish_reason else 0
                    # a sequence that failed alone (its grammar) is that request's error; the rest go on
                    sender.send(_error(f"{INVALID}{event.error}") if event.error else _response(event), flags=flags)
            except Exception as e:  # fail the sequences in flight, keep serving the next ones
                self._fail_all(f"generation failed: {e}")

    def _admit(self, block):
        try:
            self._take(self.incoming.get(timeout=0.2) if block else self.incoming.get_nowait())
            while True:
                self._take(self.incoming.get_nowait())
        except queue.Empty:
            pass

    def _take(self, item):
        if isinstance(item, _StopAll):
            # every sequence queued before it is in the generator by now (the queue is FIFO and
            # execute takes no new one once stopping_all is set)
            self._fail_all(STOPPING)
            # a response with outputs, not a bare final flag: that one no gRPC client is sent
            item.sender.send(_outputs(-1, "", "stopped"), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        else:
            try:  # a LoRA adapter that cannot be loaded fails its own request, not the batch
                self.generator.add(item)
            except ValueError as e:
                item.context[1].send(_error(f"{INVALID}{e}"), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _fail_all(self, message):
        for sequence in self.generator.cancel(lambda s: True):
            try:  # each one on its own: a send that fails must not leave the rest unanswered
                sequence.context[1].send(_error(message), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception:
                pass

    def _count(self, sizes):
        for rows in sizes:
            self.rows_total.increment(rows)
            self.steps_total.increment(1)
            if rows > self.largest:
                self.largest = rows
                self.rows_max.set(rows)

    def finalize(self):
        self.stopping.set()
        self.worker.join(timeout=5)
        if not self.worker.is_alive():  # the generator is ours now: answer what a stop_all did not reach
            self._fail_all(STOPPING)


STOPPING = "the server is stopping"
# the start of an error that is the request's fault (routes: stream.py answers it with a 400, not a 503)
INVALID = "invalid request: "


def _adapter_bank(spec):
    """A LoRA profile's adapter slots, filled from NIM_PEFT_SOURCE as requests name adapters."""
    import os

    if not spec:
        return None
    source = os.environ.get("NIM_PEFT_SOURCE", "").strip()
    return AdapterBank(spec, Path(source) if source else None)


def _vocab(session, tokenizer):
    """The logits' width: the graph's vocabulary, which may be larger than the tokenizer's."""
    width = next(o for o in session.get_outputs() if o.name == "logits").shape[-1]
    return int(width) if isinstance(width, int) else tokenizer.get_vocab_size(with_added_tokens=True)


class _StopAll:
    def __init__(self, sender):
        self.sender = sender


def _error(message):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


def _ids(request):
    ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy().reshape(-1)
    if ids.size == 0:
        raise ValueError(f"{INVALID}input_ids is empty")
    return ids.astype(np.int64).tolist()


def _scalar(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else tensor.as_numpy().reshape(-1)[0].item()


def _params(request):
    stop = pb_utils.get_input_tensor_by_name(request, "stop")
    stops = tuple(s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in stop.as_numpy().reshape(-1)) if stop else ()
    seed = _scalar(request, "seed", None)
    params = SamplingParams(max_tokens=int(_scalar(request, "max_tokens", 16)), temperature=float(_scalar(request, "temperature", 0.0)),
                            top_p=float(_scalar(request, "top_p", 1.0)), seed=None if seed is None or seed < 0 else int(seed),
                            stop=stops, ignore_eos=bool(_scalar(request, "ignore_eos", False)), **_controls(request))
    if params.max_tokens < 1:
        raise ValueError(f"{INVALID}max_tokens must be at least 1")
    return params


CONTROLS = {"top_k": int, "min_p": float, "repetition_penalty": float, "presence_penalty": float,
            "frequency_penalty": float, "min_tokens": int}


def _controls(request):
    """The `sampling` input's JSON as SamplingParams fields; a field it does not know is an error
    (the routes send only these), never dropped."""
    tensor = pb_utils.get_input_tensor_by_name(request, "sampling")
    if tensor is None:
        return {}
    try:
        given = json.loads(tensor.as_numpy().reshape(-1)[0])
    except ValueError:
        raise ValueError(f"{INVALID}sampling is not JSON") from None
    unknown = set(given) - set(CONTROLS) - {"logit_bias", "stop_token_ids", "logprobs", "grammar", "adapter"}
    if unknown:
        raise ValueError(f"{INVALID}sampling: this model does not implement {', '.join(sorted(unknown))}")
    controls = {name: kind(given[name]) for name, kind in CONTROLS.items() if name in given}
    controls["logit_bias"] = {int(k): float(v) for k, v in (given.get("logit_bias") or {}).items()}
    controls["stop_token_ids"] = tuple(int(i) for i in given.get("stop_token_ids") or ())
    if given.get("logprobs") is not None:
        controls["logprobs"] = int(given["logprobs"])
    if given.get("grammar"):
        controls["grammar"] = str(given["grammar"])
    if given.get("adapter"):
        controls["adapter"] = str(given["adapter"])
    return controls


def _response(event):
    extra = []
    if event.logprob is not None:
        top = event.top_logprobs
        extra = [pb_utils.Tensor("logprob", np.array([[event.logprob]], np.float32)),
                 pb_utils.Tensor("top_ids", np.array([[t for t, _ in top]], np.int64).reshape(1, -1)),
                 pb_utils.Tensor("top_logprobs", np.array([[v for _, v in top]], np.float32).reshape(1, -1))]
    return _outputs(event.token, event.text, event.finish_reason or "", extra)


def _outputs(token, text, finish_reason, extra=()):
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor("token_id", np.array([[token]], np.int64)),
        pb_utils.Tensor("text", np.array([[text.encode("utf-8")]], np.object_)),
        pb_utils.Tensor("finish_reason", np.array([[finish_reason.encode()]], np.object_)),
        *extra,
    ])
