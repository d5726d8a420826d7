"""Turn a user prompt into target tokens, through the GGUF's own chat template.

Chat templates are code shipped inside a downloaded file, so they are rendered
in Jinja's immutable sandbox: no attribute access to Python internals, no
mutation of our objects.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Sequence

from .backend import Model
from ..errors import SpecgenError

Message = dict  # {"role": "system"|"user"|"assistant"|"tool", "content": str, ...}
# Assistant turns that called tools also carry "tool_calls": [{"id", "type": "function", "function": {"name",
# "arguments": dict}}]; tool turns carry "tool_call_id" and "name".  Tools are OpenAI chat tools:
# [{"type": "function", "function": {"name", "description"?, "parameters"?}}].


class TemplateError(SpecgenError):
    pass


def _environment():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # {% break %} and {% continue %}: Hugging Face's renderer enables them, and templates use them.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])

    def raise_exception(message: str) -> None:
        raise TemplateError(f"the model's chat template refused the conversation: {message}")

    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.filters["tojson"] = _tojson
    return env


def _tojson(value: object, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Templates are written against Hugging Face's renderer, whose tojson is plain json.dumps; Jinja's own
    # escapes <>&' into HTML entities, and the model would read a different prompt from the one it was
    # trained on.
    try:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)
    except (TypeError, ValueError) as e:
        from jinja2.exceptions import TemplateRuntimeError

        raise TemplateRuntimeError(f"tojson: {e}") from None


def render_chat(template: str, messages: Sequence[Message], bos_token: str = "",
                eos_token: str = "", add_generation_prompt: bool = True,
                tools: Sequence[dict] | None = None) -> str:
    from jinja2 import TemplateError as JinjaError
    from jinja2.exceptions import SecurityError

    # No tools means no `tools` variable at all: templates test it every way (`if tools`,
    # `tools is not none`, `tools is defined`), and only its absence reads as "none" to all of them.
    extra = {"tools": list(tools)} if tools else {}
    try:
        tmpl = _environment().from_string(template)
        return tmpl.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                           bos_token=bos_token, eos_token=eos_token, **extra)
    except TemplateError:
        raise
    except SecurityError as e:
        raise TemplateError(f"the model's chat template tried something unsafe and was stopped: {e}") from None
    except JinjaError as e:
        raise TemplateError(f"the model's chat template failed to render: {e}") from None


def chat_tokens(model: Model, messages: Sequence[Message], raw: bool = False,
                tools: Sequence[dict] | None = None) -> list[int]:
    """Tokens for *messages* (offered *tools*), ending where the assistant's reply begins.

    raw=True (or a GGUF without a template) feeds the text as it is, as a
    base model expects.
    """
    return prompt_tokens(model, chat_text(model, messages, None if raw else model.chat_template(), tools))


def chat_text(model: Model, messages: Sequence[Message], template: str | None,
              tools: Sequence[dict] | None = None) -> str:
    """*messages* rendered with *template* and the model's BOS/EOS texts; without a
    template, the contents one after another, as a base model reads text (and no tools)."""
    if template is None:
        return "\n\n".join(m["content"] for m in messages if m["content"])
    return render_chat(template, messages, _text(model, model.bos), _text(model, model.eos), tools=tools)


def prompt_tokens(model: Model, text: str) -> list[int]:
    """*text* as prompt tokens, with the model's BOS unless the text already starts with it
    (templates often write it themselves, and a second BOS changes what the model sees)."""
    bos = _text(model, model.bos)
    return model.tokenize(text, add_special=not (bos and text.startswith(bos)))


def _text(model: Model, token: int) -> str:
    return model.token_text(token) if token >= 0 else ""


def messages_for(prompt: str, system: str | None = None) -> list[Message]:
    msgs: list[Message] = []
    if system:
        msgs.append({"role": "system", "content": system})
    msgs.append({"role": "user", "content": prompt})
    return msgs
