"""Chat messages to a prompt: the checkpoint's chat template, rendered as transformers renders it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from runtime_min.http import ApiError, ServedModel
from runtime_min.tasks.llm.schemas import Message
from runtime_min.tasks.llm.tools import template_messages


@dataclass
class ChatTemplate:
    template: Any  # the compiled jinja2 Template
    source: str
    renders_tools: bool  # whether the template reads `tools` at all


def chat_template(model: ServedModel, config: dict) -> ChatTemplate | None:
    """The checkpoint's chat template (chat_template.jinja, or tokenizer_config.json's), compiled in
    Jinja's sandbox with the filters and functions transformers gives templates; None when the
    model has none."""
    from jinja2 import meta
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    folder = model.workspace / "tokenizer"
    source = None
    if (folder / "chat_template.jinja").is_file():
        source = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    elif isinstance(config.get("chat_template"), str):
        source = config["chat_template"]
    if not source:
        return None
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    # as transformers: tojson keeps key order and non-ASCII text (Jinja's own sorts keys and
    # escapes HTML, which changes the prompt a model was trained on), and templates may raise
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise
    environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    renders_tools = "tools" in meta.find_undeclared_variables(environment.parse(source))
    return ChatTemplate(environment.from_string(source), source, renders_tools)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise(message):
    raise ValueError(message)


def render(template: ChatTemplate, messages: list[Message], special: dict, tools: list[dict] | None = None) -> str:
    for m in messages:
        if isinstance(m.content, list):  # content parts: only text is meaningful to a text model
            if any(part.type != "text" for part in m.content):
                raise ApiError(400, "only text content parts are supported by this model", param="messages")
            m.content = "".join(part.text for part in m.content)
    plain = template_messages(messages)
    extra = {"tools": tools} if tools else {}
    try:
        return template.template.render(messages=plain, add_generation_prompt=True,
                                        bos_token=special.get("bos_token") or "",
                                        eos_token=special.get("eos_token") or "", **extra)
    except Exception as e:  # a template that raises on these messages (e.g. roles it does not allow)
        raise ApiError(400, f"the chat template cannot render these messages: {e}", param="messages") from None


def tokenizer_config(model: ServedModel) -> dict:
    path = model.workspace / "tokenizer" / "tokenizer_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}
