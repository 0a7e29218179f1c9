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
from runtime_min.tasks.llm.adapters import Adapters
from runtime_min.tasks.llm.chat import chat_template, render, tokenizer_config
from runtime_min.tasks.llm.guided import Grammars
from runtime_min.tasks.llm.replies import Reply, sse, usage_wanted
from runtime_min.tasks.llm.schemas import (
    MAX_CHOICES,
    MAX_PROMPTS,
    MAX_STOP_SEQUENCES,
    ChatRequest,
    CompletionRequest,
    SamplingFields,
    stops,
)
from runtime_min.tasks.llm.stream import Job, LlmMetrics, merged, stop_all
from runtime_min.tasks.llm.tools import plan, tool_format

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
    grammars = Grammars(model.workspace / "tokenizer" / "tokenizer.json", tokenizer.get_vocab_size(with_added_tokens=True),
                        list((model.info.get("runtime") or {}).get("eos_token_ids") or []))
    calls_format = tool_format(template.source, tokenizer.token_to_id) if template else None
    adapters = _adapters(model, state)

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

    vocab = tokenizer.get_vocab_size()

    def token_text(token: int) -> str:
        return tokenizer.decode([token], skip_special_tokens=False)

    def check(body: SamplingFields) -> dict:
        """The request checked against what this model takes; the controls beyond the sampler's own
        (the LoRA adapter its model names)."""
        extra = {}
        if body.model in adapters.valid:
            extra["adapter"] = body.model
        elif body.model != model.name:
            names = [model.name, *sorted(adapters.valid)]
            served = ", ".join(names[:8]) + (f" and {len(names) - 8} more (GET /v1/models)" if len(names) > 8 else "")
            raise ApiError(404, f"The model '{body.model}' does not exist; this service serves {served}",
                           param="model", code="model_not_found")
        if len(stops(body)) > MAX_STOP_SEQUENCES:
            raise ApiError(400, f"at most {MAX_STOP_SEQUENCES} stop sequences", param="stop")
        for key, bias in (body.logit_bias or {}).items():
            if not (key.isascii() and key.isdigit() and len(key) < 10) or not -100 <= bias <= 100:
                raise ApiError(400, f"logit_bias: keys are token ids and values -100 to 100; got {key[:20]!r}: {bias}",
                               param="logit_bias")
        controls = body.controls()
        for name, ids in (("logit_bias", controls["logit_bias"]), ("stop_token_ids", controls["stop_token_ids"])):
            outside = [i for i in ids if not 0 <= i < vocab]
            if outside:
                raise ApiError(400, f"{name}: token id {outside[0]} is not in this model's vocabulary (0 to {vocab - 1})",
                               param=name)
        require_ready(triton)
        return extra

    async def guided_grammar(body: SamplingFields) -> str | None:
        """The checked grammar for the structured output a request asked for, if any."""
        guided = body.guided()
        return await grammars.grammar(guided[0], guided[1], guided[2]) if guided else None

    def choices(body: SamplingFields, prepared: list[tuple[list[int], int]]) -> list[Job]:
        """n choices per prompt, prompt by prompt (OpenAI's order); a seeded request's choices take
        seed, seed + 1, ... so they differ and each can be reproduced."""
        if len(prepared) * body.n > MAX_CHOICES:
            raise ApiError(400, f"prompts x n is {len(prepared) * body.n}; at most {MAX_CHOICES} choices a request",
                           param="n")
        return [Job(ids, max_tokens, None if body.seed is None else (body.seed + i) % (1 << 63) if body.seed >= 0 else body.seed)
                for ids, max_tokens in prepared for i in range(body.n)]

    @app.post("/v1/completions", responses=ANSWERS)
    async def completions(body: CompletionRequest):
        extra = check(body)
        if body.suffix:
            raise ApiError(400, "suffix is not supported by this runtime (no model here fills in the middle)",
                           param="suffix")
        if body.echo and body.logprobs is not None:
            raise ApiError(400, "echo with logprobs is not supported: the prompt's log-probabilities are not computed",
                           param="echo")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or len(prompts) > MAX_PROMPTS:
            raise ApiError(400, f"give 1 to {MAX_PROMPTS} prompts", param="prompt")
        prepared = [prepare(body, await tokens(p, i), body.max_tokens, i) for i, p in enumerate(prompts)]
        jobs = choices(body, prepared)
        if grammar := await guided_grammar(body):
            extra["grammar"] = grammar
        echoes = [p for p in prompts for _ in range(body.n)] if body.echo else None
        reply = Reply("cmpl", "text_completion", extra.get("adapter", model.name), chat=False, token_text=token_text, echoes=echoes)
        prompt_tokens = sum(len(ids) for ids, _ in prepared)
        events = merged(state, model, jobs, body, metrics, extra)
        if body.stream:
            return sse(reply.stream(events, len(jobs), usage_wanted(body), prompt_tokens))
        return await reply.whole(events, prompt_tokens, len(jobs))

    @app.post("/v1/chat/completions", responses=ANSWERS)
    async def chat_completions(body: ChatRequest):
        extra = check(body)
        if body.top_logprobs is not None and not body.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        if template is None:
            raise ApiError(400, "this model has no chat template; use /v1/completions", code="no_chat_template")
        tools = plan(body, template.renders_tools, calls_format)
        text = render(template, body.messages, special, tools.tools)
        ids = await tokens(text, add_special_tokens=False)
        jobs = choices(body, [prepare(body, ids, body.max_completion_tokens or body.max_tokens)])
        if tools.forced and body.guided():
            raise ApiError(400, "tool_choice that forces a call and a structured output ask for different outputs",
                           param="tool_choice")
        if grammar := await (grammars.grammar("tools", None, tools.forced) if tools.forced else guided_grammar(body)):
            extra["grammar"] = grammar
        reply = Reply("chatcmpl", "chat.completion", extra.get("adapter", model.name), chat=True, token_text=token_text,
                      tools=tools.format if tools.tools else None)
        events = merged(state, model, jobs, body, metrics, extra)
        if body.stream:
            return sse(reply.stream(events, len(jobs), usage_wanted(body), len(ids)))
        return await reply.whole(events, len(ids), len(jobs))


def _adapters(model: ServedModel, state: dict) -> Adapters:
    """A LoRA profile's adapters from NIM_PEFT_SOURCE, listed by /v1/models and kept fresh."""
    from runtime_min.settings import peft

    source, interval = peft()
    adapters = Adapters((model.info.get("runtime") or {}).get("lora"), source, model.name)
    adapters.refresh()
    state.setdefault("more_models", []).append(adapters.entries)
    if interval and adapters.spec is not None:
        state.setdefault("background", []).append(lambda: adapters.keep_refreshing(interval))
    return adapters
