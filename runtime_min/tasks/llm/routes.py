"""OpenAI-shaped `/v1/completions` and `/v1/chat/completions` over the decoupled Triton LLM model.

The prompt is rendered (chat template, as transformers renders it: Jinja in a sandbox) and
tokenised here, so a prompt over the profile's context is refused with a 400 before any work is
queued. Token ids go to Triton over a gRPC stream; each response is one token with its text
delta (detokenisation and stop sequences happen next to the generator, in the model). With
`stream: true` the deltas are forwarded as server-sent events as they arrive; a client that goes
away cancels its stream, and Triton drops the sequence from the batch.

The folder keeps a concern per module: schemas (the request bodies), chat (templates), stream
(the Triton stream), replies (OpenAI's response objects and SSE), and these routes.
"""

from __future__ import annotations

from fastapi import FastAPI

from runtime_min.http import ApiError, Metrics, ServedModel, off_the_loop_if_long, require_ready
from runtime_min.tasks.llm.chat import chat_template, render, tokenizer_config
from runtime_min.tasks.llm.replies import Reply, sse, usage_wanted
from runtime_min.tasks.llm.schemas import MAX_PROMPTS, MAX_STOP_SEQUENCES, ChatRequest, CompletionRequest, SamplingFields, stops
from runtime_min.tasks.llm.stream import LlmMetrics, merged, stop_all

# a whole answer, or server-sent events when the request says stream
ANSWERS = {200: {"description": "The completion (JSON), or its chunks as server-sent events when stream is true",
                 "content": {"application/json": {}, "text/event-stream": {}}}}


def add_routes(app: FastAPI, model: ServedModel, triton, state: dict, runtime_metrics: Metrics) -> None:
    from tokenizers import Tokenizer

    metrics = LlmMetrics(runtime_metrics.registry)

    tokenizer = Tokenizer.from_file(str(model.workspace / "tokenizer" / "tokenizer.json"))
    config = tokenizer_config(model)  # read once: the template and its special tokens serve every request
    template = chat_template(model, config)
    special = {k: (v.get("content") if isinstance(v, dict) else v) for k, v in config.items()
               if k in ("bos_token", "eos_token")}
    context = model.max_tokens

    async def stop_generations() -> None:
        await stop_all(state, model)

    state["on_stop"].append(stop_generations)

    # no text longer than this many characters fits the context: no token covers more characters
    # than the vocabulary's longest entry (x2: a normaliser may fold characters), so a longer prompt
    # is refused before the tokenizer spends seconds on it
    most_chars = 2 * context * max(map(len, tokenizer.get_vocab()))

    async def tokens(text: str, index: int = 0, **options) -> list[int]:
        if len(text) > most_chars:
            raise ApiError(400, f"prompt{f'[{index}]' if index else ''} has {len(text)} characters, more than "
                                f"this model's {context}-token context can hold", param="prompt",
                           code="context_length_exceeded")
        return await off_the_loop_if_long(len(text), lambda: tokenizer.encode(text, **options).ids)

    def prepare(body: SamplingFields, ids: list[int], max_tokens: int | None, index: int = 0) -> tuple[list[int], int]:
        if not ids:  # the generator needs a token to start from; an empty prompt is the caller's mistake
            raise ApiError(400, f"prompt{f'[{index}]' if index else ''} is empty (no tokens); give at least one token",
                           param="prompt")
        if len(ids) >= context:
            raise ApiError(400, f"prompt{f'[{index}]' if index else ''} has {len(ids)} tokens; this model's context is "
                                f"{context} tokens, and at least one must be left to generate",
                           param="prompt", code="context_length_exceeded")
        room = context - len(ids)
        if max_tokens is not None and max_tokens > room:
            raise ApiError(400, f"max_tokens is {max_tokens}, but the prompt leaves room for {room} of this model's "
                                f"{context}-token context", param="max_tokens", code="context_length_exceeded")
        return ids, max_tokens or room

    def check(body: SamplingFields) -> None:
        if body.model != model.name:
            raise ApiError(404, f"The model '{body.model}' does not exist; this service serves '{model.name}'",
                           param="model", code="model_not_found")
        unsupported = [name for name, bad in (("n", body.n != 1), ("logprobs", body.logprobs not in (None, False)),
                                              ("presence_penalty", body.presence_penalty != 0),
                                              ("frequency_penalty", body.frequency_penalty != 0)) if bad]
        if unsupported:
            raise ApiError(400, f"{unsupported[0]} is not supported by this runtime", param=unsupported[0])
        if len(stops(body)) > MAX_STOP_SEQUENCES:
            raise ApiError(400, f"at most {MAX_STOP_SEQUENCES} stop sequences", param="stop")
        require_ready(triton)

    @app.post("/v1/completions", responses=ANSWERS)
    async def completions(body: CompletionRequest):
        check(body)
        if body.echo or body.suffix:
            raise ApiError(400, f"{'echo' if body.echo else 'suffix'} is not supported by this runtime",
                           param="echo" if body.echo else "suffix")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or len(prompts) > MAX_PROMPTS:
            raise ApiError(400, f"give 1 to {MAX_PROMPTS} prompts", param="prompt")
        jobs = [prepare(body, await tokens(p, i), body.max_tokens, i) for i, p in enumerate(prompts)]
        reply = Reply("cmpl", "text_completion", model.name, chat=False)
        if body.stream:
            return sse(reply.stream(merged(state, model, jobs, body, metrics), len(jobs), usage_wanted(body),
                                     sum(len(ids) for ids, _ in jobs)))
        return await reply.whole(merged(state, model, jobs, body, metrics), [len(ids) for ids, _ in jobs])

    @app.post("/v1/chat/completions", responses=ANSWERS)
    async def chat_completions(body: ChatRequest):
        check(body)
        if template is None:
            raise ApiError(400, "this model has no chat template; use /v1/completions", code="no_chat_template")
        text = render(template, body.messages, special)
        ids = await tokens(text, add_special_tokens=False)
        jobs = [prepare(body, ids, body.max_completion_tokens or body.max_tokens)]
        reply = Reply("chatcmpl", "chat.completion", model.name, chat=True)
        if body.stream:
            return sse(reply.stream(merged(state, model, jobs, body, metrics), 1, usage_wanted(body), len(ids)))
        return await reply.whole(merged(state, model, jobs, body, metrics), [len(ids)])
