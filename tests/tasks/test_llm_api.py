"""The LLM API beyond plain text, served: structured output (JSON schema, json_object, NIM's
guided_json / regex / choice / grammar) and tool calling, through the official openai SDK against
the tiny-llama example (compiled and served once: tests/tasks/conftest.py).

The model's weights are random, so what is checked is what a grammar guarantees whatever the
weights: every sampled output parses and fits, over many seeds, batched beside unconstrained
requests that stay equal to transformers' greedy text."""

from __future__ import annotations

import concurrent.futures
import json
import re
import time

import httpx
import jsonschema
import pytest

from helpers.paths import REPO

TINY_LLAMA = REPO / "examples" / "tiny-llama" / "model"
MODEL = "tiny-llama"

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags", "ok"],
          "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
                         "ok": {"type": "boolean"}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}},
                                       "required": ["zone"]}}}


def _client(runtime):
    import openai

    return openai.OpenAI(base_url=f"{runtime.url}/v1", api_key="not-needed", max_retries=0)


def _greedy(prompt: str, max_new_tokens: int) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TINY_LLAMA)
    model = AutoModelForCausalLM.from_pretrained(TINY_LLAMA).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_json_schema_output_fits_its_schema_every_time_batched_beside_free_text(llm_runtime):
    """32 sampled answers under a strict json_schema, 8 at a time, with unconstrained greedy requests
    in the same batches: every answer parses and validates, and the free rows are untouched."""
    client = _client(llm_runtime)
    expected = _greedy("The quick brown fox", 24)
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}

    def constrained(seed):
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Who?"}],
                                               response_format=response_format, temperature=1.0, seed=seed, max_tokens=120)
        return reply.choices[0]

    def free(_):
        return client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=24, temperature=0).choices[0].text

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(constrained, range(32)))
        free_texts = list(pool.map(free, range(8)))
        mixed = [pool.submit(constrained, 100 + i) if i % 2 else pool.submit(free, i) for i in range(8)]
        mixed = [f.result() for f in mixed]
    for choice in answers + mixed[1::2]:
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), PERSON)
    assert len({c.message.content for c in answers}) > 8, "seeds give different answers"
    assert free_texts == [expected] * 8 and mixed[0::2] == [expected] * 4


@pytest.mark.parametrize("nvext, check", [
    ({"guided_json": PERSON}, lambda t: jsonschema.validate(json.loads(t), PERSON)),
    ({"guided_json": json.dumps(PERSON)}, lambda t: jsonschema.validate(json.loads(t), PERSON)),
    ({"guided_regex": r"[0-9]{3}-[a-z]{2,4}"}, lambda t: re.fullmatch(r"[0-9]{3}-[a-z]{2,4}", t) or pytest.fail(t)),
    ({"guided_choice": ["yes", "no", "maybe so"]}, lambda t: t in ("yes", "no", "maybe so") or pytest.fail(t)),
    ({"guided_grammar": 'start: "(" NUM ("+" NUM)* ")"\nNUM: /[0-9]{1,2}/\n'},
     lambda t: re.fullmatch(r"\([0-9]{1,2}(\+[0-9]{1,2})*\)", t) or pytest.fail(t)),
    ({"guided_grammar": 'root ::= "say " word\nword ::= "hi" | "bye"\n'}, lambda t: t in ("say hi", "say bye") or pytest.fail(t)),
], ids=["json", "json-text", "regex", "choice", "lark", "gbnf"])
def test_nvext_guided_decoding_always_matches(llm_runtime, nvext, check):
    client = _client(llm_runtime)
    for seed in range(6):
        reply = client.completions.create(model=MODEL, prompt="Answer:", max_tokens=120, temperature=1.0, seed=seed,
                                          extra_body={"nvext": nvext})
        assert reply.choices[0].finish_reason == "stop"
        check(reply.choices[0].text)


def test_json_object_and_streamed_structured_output(llm_runtime):
    client = _client(llm_runtime)
    for seed in range(4):
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "JSON please"}],
                                               response_format={"type": "json_object"}, temperature=1.0, seed=seed,
                                               max_tokens=200, extra_body={"nvext": {}})
        if reply.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(reply.choices[0].message.content), dict)
    chunks = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Who?"}], stream=True,
                                            response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}},
                                            temperature=1.0, seed=3, max_tokens=120)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), PERSON)


HOSTILE = {
    "unsatisfiable": {"type": "string", "minLength": 5, "maxLength": 2},
    "dangling-ref": {"type": "object", "properties": {"a": {"$ref": "#/$defs/nowhere"}}},
    "not-a-schema": {"type": "no-such-type"},
    "deep": json.loads('{"type":"object","properties":{"a":' * 60 + '{"type":"integer"}' + "}}" * 60),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_schema_the_library_refuses_is_a_400_naming_the_field_in_bounded_time(llm_runtime, name):
    body = {"model": MODEL, "prompt": "x", "max_tokens": 4, "nvext": {"guided_json": HOSTILE[name]}}
    start = time.perf_counter()
    response = httpx.post(f"{llm_runtime.url}/v1/completions", json=body, timeout=60)
    took = time.perf_counter() - start
    if name == "deep":  # a deep but valid schema is taken, and what comes back fits it
        assert response.status_code == 200, response.text
        if response.json()["choices"][0]["finish_reason"] == "stop":
            jsonschema.validate(json.loads(response.json()["choices"][0]["text"]), HOSTILE[name])
    else:
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "nvext.guided_json", response.text
    assert took < 15


@pytest.mark.parametrize("field, value, param", [
    ("nvext", {"guided_regex": "([a-z"}, "nvext.guided_regex"),
    ("nvext", {"guided_grammar": "start: nothing_defined"}, "nvext.guided_grammar"),
    ("nvext", {"guided_json": "{not json"}, "nvext.guided_json"),
    ("nvext", {"guided_choice": []}, "nvext.guided_choice"),
    ("nvext", {"guided_json": {"type": "object"}, "guided_regex": "a+"}, "nvext.guided_regex"),
    ("response_format", {"type": "json_schema"}, "response_format"),
    ("response_format", {"type": "xml"}, "response_format.type"),
    ("nvext", {"guided_choice": ["x" * 50 + str(i) for i in range(1000)]}, None),  # big but fine
    ("nvext", {"guided_json": {"enum": [f"value-{i}" for i in range(5000)]}}, None),  # huge enum: taken
    # a regex whose deterministic automaton is exponential in its length: llguidance builds it lazily
    ("nvext", {"guided_regex": "(a|b)*a(a|b){40}"}, None),
])
def test_guided_fields_are_checked_before_anything_is_queued(llm_runtime, field, value, param):
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2, field: value}
    response = httpx.post(f"{llm_runtime.url}/v1/completions", json=body, timeout=60)
    if param is None:
        assert response.status_code == 200, response.text
        return
    assert response.status_code == 400, response.text
    assert param in (response.json()["error"]["param"] or ""), response.text


def test_a_schema_nested_past_any_parser_depth_is_a_4xx_not_a_crash(llm_runtime):
    deep = '{"type":"array","items":' * 3000 + "{}" + "}" * 3000
    body = '{"model": "%s", "prompt": "x", "max_tokens": 2, "nvext": {"guided_json": %s}}' % (MODEL, deep)
    response = httpx.post(f"{llm_runtime.url}/v1/completions", content=body,
                          headers={"content-type": "application/json"}, timeout=60)
    assert 400 <= response.status_code < 500, response.text
    assert httpx.get(f"{llm_runtime.url}/v1/health/ready").status_code == 200


# --- tools ----------------------------------------------------------------------------------------

def test_tools_render_through_the_chat_template_as_transformers_renders_them(llm_runtime):
    """The prompt the server tokenises equals transformers' apply_chat_template(tools=...), tool
    calls and tool results in the history included (usage.prompt_tokens counts it)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TINY_LLAMA)
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "abc123XYZ", "type": "function", "function": {"name": "get_weather",
                                                                         "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
               {"role": "tool", "tool_call_id": "abc123XYZ", "content": "sunny, 21"}]
    as_transformers = [{**m, "content": m["content"] or ""} for m in history]
    as_transformers[2]["tool_calls"] = [{**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}}
                                        for c in history[2]["tool_calls"]]
    expected = tokenizer.apply_chat_template(as_transformers, tools=[WEATHER], add_generation_prompt=True, tokenize=False)
    assert "<tools>" in expected and "<tool_response>" in expected
    reply = _client(llm_runtime).chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], max_tokens=1,
                                                         temperature=0)
    assert reply.usage.prompt_tokens == len(tokenizer(expected, add_special_tokens=False).input_ids)
    without = _client(llm_runtime).chat.completions.create(model=MODEL, messages=history[:2], max_tokens=1, temperature=0)
    assert without.usage.prompt_tokens < reply.usage.prompt_tokens


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_time"}}],
                         ids=["required", "named"])
def test_a_forced_tool_call_comes_back_as_tool_calls_whose_arguments_fit(llm_runtime, tool_choice):
    client = _client(llm_runtime)
    tools = {"get_weather": WEATHER, "get_time": TIME}
    for seed in range(8):
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}],
                                               tools=list(tools.values()), tool_choice=tool_choice, temperature=1.0,
                                               seed=seed, max_tokens=200, parallel_tool_calls=False)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        (call,) = choice.message.tool_calls
        if isinstance(tool_choice, dict):
            assert call.function.name == "get_time"
        jsonschema.validate(json.loads(call.function.arguments), tools[call.function.name]["function"]["parameters"])
        assert re.fullmatch(r"[A-Za-z0-9]{9}", call.id)


def test_streamed_tool_calls_arrive_as_openai_streams_them(llm_runtime):
    client = _client(llm_runtime)
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER, TIME],
                  tool_choice="required", temperature=1.0, seed=5, max_tokens=250)
    whole = client.chat.completions.create(**kwargs)
    chunks = [c for c in client.chat.completions.create(**kwargs, stream=True) if c.choices]
    calls = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["tool_calls"]
    assert [(c.function.name, c.function.arguments) for c in calls] == \
        [(c.function.name, c.function.arguments) for c in whole.choices[0].message.tool_calls]
    assert [c.index for c in calls] == list(range(len(calls))) and all(c.id and c.type == "function" for c in calls)
    assert not "".join(c.choices[0].delta.content or "" for c in chunks), "a forced call has no content"


def test_tool_choice_none_and_auto_answer_in_text_when_the_model_does_not_call(llm_runtime):
    client = _client(llm_runtime)
    for choice in ("none", "auto"):
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}],
                                               tools=[WEATHER], tool_choice=choice, max_tokens=12, temperature=0)
        assert reply.choices[0].message.tool_calls is None and reply.choices[0].message.content


@pytest.mark.parametrize("body, param", [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string", "minLength": 3, "maxLength": 1}}}],
      "tool_choice": "required"}, "tools"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "a", "type": "function",
                                                         "function": {"name": "f", "arguments": "{oops"}}]}]}, "messages"),
])
def test_bad_tool_requests_are_400s_naming_the_field(llm_runtime, body, param):
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **body}
    response = httpx.post(f"{llm_runtime.url}/v1/chat/completions", json=payload, timeout=30)
    assert response.status_code == 400, response.text
    assert param in (response.json()["error"]["param"] or ""), response.text
