"""The OpenAI-shaped request bodies of /v1/completions and /v1/chat/completions, as pydantic models.

Every model forbids fields it does not declare: a field this runtime does not implement is a 400
naming it (runtime_min.http), never a request answered as if it had not been sent. The OpenAPI
document says exactly what is taken (`_documented`).
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from runtime_min.http import ApiError, Text

MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_PROMPTS = 16
MAX_CHOICES = 64  # prompts x n in one request
MAX_STOP_TOKEN_IDS = 64
MAX_LOGIT_BIAS = 300  # OpenAI's limit on logit_bias entries
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat (completions: 5; vLLM takes 20 on both)
MAX_GRAMMAR_CHARS = 100_000  # a regex, grammar or schema's text; llguidance's limits bound the rest
MAX_CHOICE_OPTIONS = 1000
MAX_TOOLS = 128  # OpenAI's limit


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class NvExt(BaseModel):
    """NIM's `nvext` extension, the sampling fields of it this runtime implements (the same as the
    top-level vLLM-style fields; where both are given, nvext's win)."""

    model_config = ConfigDict(extra="forbid")
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    ignore_eos: bool | None = None
    min_tokens: int | None = Field(None, ge=0)
    stop_token_ids: list[int] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    # structured output, NIM's and vLLM's names (at most one, and not with response_format)
    guided_json: Union[dict[str, Any], str, None] = None  # a JSON schema, or its text
    guided_regex: str | None = Field(None, max_length=MAX_GRAMMAR_CHARS)
    guided_choice: list[str] | None = Field(None, min_length=1, max_length=MAX_CHOICE_OPTIONS)
    guided_grammar: str | None = Field(None, max_length=MAX_GRAMMAR_CHARS)  # Lark, or GBNF (`::=` rules)


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None  # the output always fits the schema here, strict or not


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


def _documented(schema: dict) -> None:
    """What the OpenAPI document says of a request (tests/helpers/servers.py: schemathesis): the counts
    it holds prompts and stop sequences to. The limits that hang on the tokens (a prompt that fills
    the context, max_tokens beyond the room left, token ids past the vocabulary) no schema can say;
    they are 400s with the reason."""
    fields = schema.get("properties", {})
    if "suffix" in fields:
        fields["suffix"] = {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 0}], "default": None}
    text = {"type": "string"}
    fields["stop"] = {"anyOf": [{"type": "null"}, text, {"type": "array", "items": text, "maxItems": MAX_STOP_SEQUENCES}]}
    if "prompt" in fields:
        fields["prompt"] = {"anyOf": [text, {"type": "array", "items": text, "minItems": 1, "maxItems": MAX_PROMPTS}]}


class SamplingFields(BaseModel):
    """The fields both routes share: OpenAI's sampling parameters, and vLLM's and NIM's extensions
    (top_k, min_p, repetition_penalty, min_tokens, stop_token_ids, ignore_eos; also under nvext)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_documented)

    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Union[Text, list[Text], None] = None
    seed: int | None = Field(None, ge=-(1 << 63), lt=1 << 63)  # Triton's INT64; beyond it was a 500
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(None, max_length=MAX_LOGIT_BIAS)
    user: str | None = None
    top_k: int = Field(0, ge=-1)  # 0 or -1: no cut
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    min_tokens: int = Field(0, ge=0)
    stop_token_ids: list[int] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    # vLLM's and NIM's extension: generate through end-of-sequence tokens (benchmarks use it to get
    # exactly max_tokens)
    ignore_eos: bool = False
    nvext: NvExt | None = None
    response_format: ResponseFormat | None = None

    def top_logprobs_wanted(self) -> int | None:
        """None for no logprobs; else how many alternatives each token carries."""
        raise NotImplementedError

    def controls(self) -> dict:
        """The sampler's settings beyond temperature, top_p, seed, stop and ignore_eos, by
        nimbuild.serving.generation.SamplingParams' names (what the Triton model's `sampling` input
        carries); nvext's values win over the top-level ones."""
        ext = self.nvext.model_dump(exclude_none=True) if self.nvext else {}
        bias = {int(k): v for k, v in (self.logit_bias or {}).items()}
        return {"top_k": max(0, ext.get("top_k", self.top_k)), "min_p": ext.get("min_p", self.min_p),
                "repetition_penalty": ext.get("repetition_penalty", self.repetition_penalty),
                "presence_penalty": self.presence_penalty, "frequency_penalty": self.frequency_penalty,
                "logit_bias": bias, "min_tokens": ext.get("min_tokens", self.min_tokens),
                "stop_token_ids": list(ext.get("stop_token_ids", self.stop_token_ids or [])),
                "logprobs": self.top_logprobs_wanted()}

    def guided(self) -> tuple[str, str, Any] | None:
        """The structured output asked for, as (the field that asked, the grammar kind, its
        spec) for nimbuild.serving.constrained.grammar_for; None for free text. Two at once is
        a 400: which one to obey would be a guess."""
        asked = []
        if self.response_format and self.response_format.type == "json_object":
            asked.append(("response_format", "json", {"type": "object"}))
        elif self.response_format and self.response_format.type == "json_schema":
            if self.response_format.json_schema is None:
                raise ApiError(400, "response_format of type json_schema needs json_schema", param="response_format")
            asked.append(("response_format", "json", self.response_format.json_schema.schema_))
        ext = self.nvext
        if ext is not None:
            for name, kind in (("guided_json", "json"), ("guided_regex", "regex"), ("guided_choice", "choice"),
                               ("guided_grammar", "lark")):
                if getattr(ext, name) is not None:
                    asked.append((f"nvext.{name}", kind, getattr(ext, name)))
        if len(asked) > 1:
            raise ApiError(400, f"give one of {' and '.join(a[0] for a in asked)}: they ask for different outputs",
                           param=asked[1][0])
        return asked[0] if asked else None

    def ignoring_eos(self) -> bool:
        return bool(self.nvext.ignore_eos) if self.nvext and self.nvext.ignore_eos is not None else self.ignore_eos


class CompletionRequest(SamplingFields):
    prompt: Union[Text, list[Text]]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)  # the alternatives per token

    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    text: Text = ""


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[Text, list[ContentPart], None] = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool message's answer to one


class Function(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; none: no arguments
    strict: bool | None = None  # the arguments always fit the schema when a call is enforced


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: Function


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: NamedFunction


class ChatRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: bool = True

    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


def stops(body: SamplingFields) -> list[str]:
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return [s for s in stops if s]
