"""Chat messages to a prompt: the checkpoint's chat template, rendered as transformers renders it."""

from __future__ import annotations

import json

from runtime_min.http import ApiError, ServedModel
from runtime_min.tasks.llm.schemas import Message


def chat_template(model: ServedModel, config: dict):
    """The checkpoint's chat template (chat_template.jinja, or tokenizer_config.json's), compiled in
    Jinja's sandbox as transformers does; None when the model has none."""
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
    return environment.from_string(source)


def render(template, messages: list[Message], special: dict) -> str:
    plain = []
    for m in messages:
        content = m.content
        if isinstance(content, list):  # content parts: only text is meaningful to a text model
            if any(part.type != "text" for part in content):
                raise ApiError(400, "only text content parts are supported by this model", param="messages")
            content = "".join(part.text for part in content)
        plain.append({"role": m.role, "content": content or ""})
    try:
        return template.render(messages=plain, add_generation_prompt=True, bos_token=special.get("bos_token") or "",
                               eos_token=special.get("eos_token") or "")
    except Exception as e:  # a template that raises on these messages (e.g. roles it does not allow)
        raise ApiError(400, f"the chat template cannot render these messages: {e}", param="messages") from None


def tokenizer_config(model: ServedModel) -> dict:
    path = model.workspace / "tokenizer" / "tokenizer_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}
