"""The OpenAI-shaped request bodies of /v1/completions and /v1/chat/completions, as pydantic models.

Every model forbids fields it does not declare: a field this runtime does not implement is a 400
naming it (runtime_min.http), never a request answered as if it had not been sent. The OpenAPI
document says exactly what is taken (`_documented`).
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from runtime_min.http import Text

MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_PROMPTS = 16


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


def _documented(schema: dict) -> None:
    """What the OpenAPI document says of a request (tests/helpers/servers.py: schemathesis): the OpenAI
    fields this runtime takes only at their defaults say so, and the counts it holds prompts and
    stop sequences to. The limits that hang on the tokens (a prompt that fills the context,
    max_tokens beyond the room left) no schema can say; they are 400s with the reason."""
    fields = schema.get("properties", {})
    only = {"n": 1, "presence_penalty": 0, "frequency_penalty": 0, "echo": False}
    for name, value in only.items():
        if name in fields:
            fields[name] = {"enum": [value], "default": value, "description": "supported at its default only"}
    if "logprobs" in fields:
        fields["logprobs"] = {"enum": [None, False], "default": None, "description": "not supported"}
    if "suffix" in fields:
        fields["suffix"] = {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 0}], "default": None}
    text = {"type": "string"}
    fields["stop"] = {"anyOf": [{"type": "null"}, text, {"type": "array", "items": text, "maxItems": MAX_STOP_SEQUENCES}]}
    if "prompt" in fields:
        fields["prompt"] = {"anyOf": [text, {"type": "array", "items": text, "minItems": 1, "maxItems": MAX_PROMPTS}]}


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_documented)

    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Union[Text, list[Text], None] = None
    seed: int | None = Field(None, ge=-(1 << 63), lt=1 << 63)  # Triton's INT64; beyond it was a 500
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: Any = None
    user: str | None = None
    # vLLM's and NIM's extension: generate through end-of-sequence tokens (benchmarks use it to get
    # exactly max_tokens)
    ignore_eos: bool = False


class CompletionRequest(SamplingFields):
    prompt: Union[Text, list[Text]]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    echo: bool = False
    suffix: str | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str
    text: Text = ""


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[Text, list[ContentPart], None] = None


class ChatRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)


def stops(body: SamplingFields) -> list[str]:
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return [s for s in stops if s]
