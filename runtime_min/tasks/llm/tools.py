"""Tool calling: the tools a chat request offers, rendered by the checkpoint's chat template as
transformers renders them (`apply_chat_template(tools=...)`); the model's tool-call text parsed
into OpenAI's `tool_calls`; and, for `tool_choice` `required` or a named function, the grammar
that makes the model call (nimbuild.serving.constrained enforces it).

The call format is the checkpoint's, read from its chat template:
- `hermes`: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` (Hermes, Qwen 2/2.5/3);
- `mistral`: the `[TOOL_CALLS]` token, then a JSON list of `{"name": ..., "arguments": {...}}`;
- `llama3`: a JSON object `{"name": ..., "parameters": {...}}` as the whole answer (Llama 3.1+
  JSON tool calling).
A template that renders tools in none of these is refused a request with tools (a 400), since its
calls could not be read back.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass, field

from runtime_min.http import ApiError
from runtime_min.tasks.llm.schemas import ChatRequest, Tool

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
MISTRAL_MARKER = "[TOOL_CALLS]"


@dataclass(frozen=True)
class ToolFormat:
    name: str  # hermes, mistral or llama3
    marker_id: int | None = None  # mistral: the [TOOL_CALLS] token

    @property
    def arguments_key(self) -> str:
        return "parameters" if self.name == "llama3" else "arguments"


def tool_format(template_source: str, token_id) -> ToolFormat | None:
    """The call format a chat template's text shows; None when it shows none this module reads.
    `token_id(text)` is the tokenizer's id for a special token, or None."""
    if HERMES_OPEN in template_source:
        return ToolFormat("hermes")
    if MISTRAL_MARKER in template_source and token_id(MISTRAL_MARKER) is not None:
        return ToolFormat("mistral", token_id(MISTRAL_MARKER))
    if "<|python_tag|>" in template_source or ("ipython" in template_source and '"parameters"' in template_source):
        return ToolFormat("llama3")
    return None


@dataclass
class ToolPlan:
    """What a chat request's tools mean for this request: the tools the template renders (None:
    none), the format their calls come back in, and the grammar text that forces a call."""

    tools: list[dict] | None = None
    format: ToolFormat | None = None
    forced: str | None = None  # llguidance grammar for tool_choice required / a named function


def plan(body: ChatRequest, renders_tools: bool, fmt: ToolFormat | None) -> ToolPlan:
    """The request's tools and tool_choice checked against what this model can do with them."""
    choice = body.tool_choice
    if not body.tools:
        if choice not in (None, "none"):
            raise ApiError(400, "tool_choice needs tools", param="tool_choice")
        return ToolPlan()
    names = [t.function.name for t in body.tools]
    if len(set(names)) != len(names):
        raise ApiError(400, "tools: two functions share a name", param="tools")
    if choice == "none":  # the model is not to call: the tools are not rendered at all
        return ToolPlan()
    if not renders_tools:
        raise ApiError(400, "this model's chat template does not render tools, so it cannot be offered them",
                       param="tools")
    if fmt is None:
        raise ApiError(400, "this model's chat template renders tools in a call format this runtime does not "
                            "parse (it reads Hermes/Qwen <tool_call>, Mistral [TOOL_CALLS] and Llama 3 JSON)",
                       param="tools")
    offered = body.tools
    if not isinstance(choice, (str, type(None))):
        offered = [t for t in body.tools if t.function.name == choice.function.name]
        if not offered:
            raise ApiError(400, f"tool_choice names {choice.function.name!r}, which is not in tools",
                           param="tool_choice")
    forced = None
    if choice not in (None, "auto"):
        try:
            forced = forcing_grammar(fmt, offered, body.parallel_tool_calls)
        except Exception as e:  # a parameters schema llguidance cannot take
            raise ApiError(400, f"tools: the call grammar is refused: {str(e).strip()[:300]}", param="tools") from None
    return ToolPlan([t.model_dump(exclude_none=True) for t in body.tools], fmt, forced)


def forcing_grammar(fmt: ToolFormat, tools: list[Tool], parallel: bool) -> str:
    """llguidance Lark grammar for one call (or several, with parallel calls) of these tools, in
    the model's own format: its arguments fit each function's parameters schema."""
    from llguidance import LLMatcher

    schema = _calls_schema(fmt, tools)
    if fmt.name == "hermes":
        call = f'"{HERMES_OPEN}\\n" %json {json.dumps(schema)} "\\n{HERMES_CLOSE}"'
        more = ' ("\\n" call)*' if parallel else ""
        lark = f"start: call{more}\ncall: {call}\n"
    elif fmt.name == "mistral":
        listed = {"type": "array", "items": schema, "minItems": 1, **({} if parallel else {"maxItems": 1}),
                  "x-guidance": {"whitespace_flexible": False}}
        lark = f"start: <[{fmt.marker_id}]> %json {json.dumps(listed)}\n"
    else:  # llama3: one JSON call is the whole answer
        lark = f"start: %json {json.dumps(schema)}\n"
    return LLMatcher.grammar_from_lark(lark)


def _calls_schema(fmt: ToolFormat, tools: list[Tool]) -> dict:
    def one(tool: Tool) -> dict:
        parameters = tool.function.parameters or {"type": "object", "properties": {}}
        return {"type": "object", "properties": {"name": {"const": tool.function.name}, fmt.arguments_key: parameters},
                "required": ["name", fmt.arguments_key], "additionalProperties": False}

    options = [one(t) for t in tools]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    # compact JSON: a model has no free-form whitespace to ramble in
    return {**schema, "x-guidance": {"whitespace_flexible": False}}


def template_messages(messages) -> list[dict]:
    """The messages as chat templates read them (transformers' shape): an assistant's tool calls
    with their arguments as objects, a tool message's call id."""
    plain = []
    for m in messages:
        entry = {"role": m.role, "content": m.content or ""}
        if m.name:
            entry["name"] = m.name
        if m.tool_call_id:
            entry["tool_call_id"] = m.tool_call_id
        if m.tool_calls:
            entry["tool_calls"] = [{"id": c.id, "type": "function",
                                    "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)}}
                                   for c in m.tool_calls]
        plain.append(entry)
    return plain


def _arguments(text: str):
    try:
        value = json.loads(text)
    except ValueError:
        raise ApiError(400, "messages: a tool call's arguments are not JSON", param="messages") from None
    return value


@dataclass
class ToolStream:
    """One choice's output, read as it streams: the content to show now (text before any call,
    with a tail that may start a call held back) and, at the end, the calls. Pieces are
    (text, token id)."""

    format: ToolFormat
    text: str = ""
    emitted: int = 0  # characters of content handed out
    calling: bool = False  # a call has begun: everything from here is held for the parser
    before_marker: str = ""  # mistral: the text before the [TOOL_CALLS] token
    after_marker: str = ""
    pieces: list = field(default_factory=list)

    def push(self, text: str, token: int) -> str:
        self.text += text
        fmt = self.format.name
        if fmt == "mistral":
            if token == self.format.marker_id:
                self.calling = True
            elif self.calling:
                self.after_marker += text
            else:
                self.before_marker += text
            return self._emit(len(self.before_marker) if not self.calling else self.emitted, self.before_marker)
        if fmt == "hermes":
            start = self.text.find(HERMES_OPEN)
            if start >= 0:
                self.calling = True
                return self._emit(start, self.text)
            return self._emit(len(self.text) - _partial_tail(self.text, HERMES_OPEN), self.text)
        # llama3: an answer whose first visible character is `{` is read as a call
        if not self.calling and self.emitted == 0 and self.text.strip():
            self.calling = self.text.lstrip().startswith("{")
        if self.calling or not self.text.strip():
            return ""
        return self._emit(len(self.text), self.text)

    def _emit(self, upto: int, source: str) -> str:
        delta = source[self.emitted:max(self.emitted, upto)]
        self.emitted = max(self.emitted, upto)
        return delta

    def finish(self) -> tuple[str, list[dict]]:
        """The content not yet handed out, and the calls (OpenAI's tool_calls entries). A call
        that does not parse is left as content, as it came."""
        content, calls = parse(self.format, self.text, self.before_marker, self.after_marker, self.calling)
        if not calls:
            content = self.text
        return content[self.emitted:], calls


def parse(fmt: ToolFormat, text: str, before_marker: str = "", after_marker: str = "",
          marked: bool = False) -> tuple[str, list[dict]]:
    """(content, calls) from a whole output; no calls when the call text does not parse."""
    try:
        if fmt.name == "hermes":
            start = text.find(HERMES_OPEN)
            if start < 0:
                return text, []
            blocks = re.findall(rf"{re.escape(HERMES_OPEN)}\s*(.*?)\s*(?:{re.escape(HERMES_CLOSE)}|$)", text[start:], re.S)
            found = [_call(json.loads(b), "arguments") for b in blocks if b]
            return text[:start], found
        if fmt.name == "mistral":
            if not marked:
                return text, []
            listed = json.loads(after_marker)
            return before_marker, [_call(c, "arguments") for c in (listed if isinstance(listed, list) else [listed])]
        stripped = text.strip()
        if not stripped.startswith("{"):
            return text, []
        return "", [_call(json.loads(part), "parameters") for part in stripped.split(";") if part.strip()]
    except (ValueError, TypeError, KeyError):
        return text, []


def _call(value: dict, key: str) -> dict:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise ValueError("not a call")
    arguments = value.get(key, value.get("arguments", {}))
    return {"id": call_id(), "type": "function",
            "function": {"name": value["name"], "arguments": json.dumps(arguments, ensure_ascii=False)}}


def call_id() -> str:
    """A call's id: 9 letters and digits, the shape Mistral's templates insist on, which fits
    every other template too."""
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))


def _partial_tail(text: str, marker: str) -> int:
    """How many characters at the end of `text` could be the start of `marker`."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0
