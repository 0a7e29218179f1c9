"""Tool-call formats without a server: which format a chat template shows, the calls read out of
each family's output (whole and streamed piece by piece), and the grammar that forces a call
accepting exactly the family's call text (llguidance walking the tokens of tiny-llama's tokenizer).
The served path (Hermes, through the tiny-llama example) is tests/tasks/test_llm_api.py."""

from __future__ import annotations

import json

import pytest

from helpers.paths import REPO
from runtime_min.tasks.llm.schemas import Tool
from runtime_min.tasks.llm.tools import ToolFormat, ToolStream, forcing_grammar, parse, tool_format

TOKENIZER = REPO / "examples" / "tiny-llama" / "model" / "tokenizer.json"
WEATHER = Tool.model_validate({"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 10}}, "required": ["city"]}}})
MARKER = 3  # a stand-in id for Mistral's [TOOL_CALLS] token (tiny-llama's <|im_end|>)


@pytest.mark.parametrize("template, expected", [
    ("{% for tool in tools %}{{ tool | tojson }}{% endfor %}<tool_call>", "hermes"),
    ("{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]", "mistral"),
    ("{%- if tools %}ipython ... {\"name\": function name, \"parameters\": dictionary}<|python_tag|>", "llama3"),
    ("{% for m in messages %}{{ m.content }}{% endfor %}", None),
])
def test_the_call_format_is_read_from_the_template(template, expected):
    fmt = tool_format(template, lambda text: 7 if text == "[TOOL_CALLS]" else None)
    assert (fmt.name if fmt else None) == expected


CASES = {
    "hermes": (ToolFormat("hermes"), [("Let me look. ", 1), ("<tool_", 2), ("call>\n", 2),
                                      ('{"name": "get_weather", "arguments": {"city": "Paris"}}', 2),
                                      ("\n</tool_call>", 2)], "Let me look. "),
    "mistral": (ToolFormat("mistral", MARKER), [("Sure", 1), ("", MARKER),
                                                ('[{"name": "get_weather", "arguments": {"city": "Paris"}}]', 2)], "Sure"),
    "llama3": (ToolFormat("llama3"), [(" ", 1), ('{"name": "get_weather", ', 2), ('"parameters": {"city": "Paris"}}', 2)], ""),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_calls_are_read_from_each_family_output_whole_and_streamed(name):
    fmt, pieces, content = CASES[name]
    reader = ToolStream(fmt)
    shown = "".join(reader.push(text, token) for text, token in pieces)
    rest, calls = reader.finish()
    assert shown + rest == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert "<tool" not in shown, "nothing of a call is shown as content"


@pytest.mark.parametrize("name", sorted(CASES))
def test_text_that_is_not_a_call_stays_content(name):
    fmt = CASES[name][0]
    for text in ("plain words", '{"no": "name"}', "<tool_call>\n{broken\n</tool_call>"):
        reader = ToolStream(fmt)
        shown = "".join(reader.push(ch, 1) for ch in text)
        rest, calls = reader.finish()
        assert calls == [] and shown + rest == text
    assert parse(fmt, "just text") == ("just text", [])


@pytest.mark.parametrize("name, text, accepted", [
    ("hermes", '<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris"}}\n</tool_call>', True),
    ("hermes", '<tool_call>\n{"name":"get_time","arguments":{}}\n</tool_call>', False),
    ("hermes", '{"name":"get_weather","arguments":{"city":"Paris"}}', False),
    ("llama3", '{"name":"get_weather","parameters":{"city":"Paris"}}', True),
    ("llama3", '{"name":"get_weather","parameters":{"city":"Paris, France!"}}', False),  # over maxLength
    ("mistral", '[{"name":"get_weather","arguments":{"city":"Rome"}}]', True),
])
def test_the_forcing_grammar_takes_the_family_call_and_nothing_else(name, text, accepted):
    from llguidance import LLMatcher, LLTokenizer
    from tokenizers import Tokenizer

    fmt = CASES[name][0]
    tokenizer = LLTokenizer(TOKENIZER.read_text(), n_vocab=512, eos_token=[0])
    matcher = LLMatcher(tokenizer, forcing_grammar(fmt, [WEATHER], parallel=False), log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    ids = ([MARKER] if name == "mistral" else []) + Tokenizer.from_file(str(TOKENIZER)).encode(text).ids
    ok = all(matcher.try_consume_tokens([token]) == 1 for token in ids) and matcher.is_accepting()
    assert ok == accepted
