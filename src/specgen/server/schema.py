"""OpenAI request bodies in, checked requests out; every refusal is an OpenAI-shaped error.

What the server cannot honour (n > 1, tools, JSON modes, images, logprobs,
penalties it does not implement) is refused with a message that says so,
never silently dropped; fields it does not know are ignored, as OpenAI does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import SpecgenError, is_finite_number, kind_of
from ..llama.chat_template import Message
from ..sampling import SamplingParams
from ..settings import check_count, parse_draft_max

MAX_STOP = 4  # OpenAI's limit on stop sequences


class APIError(Exception):
    """An error response: HTTP status plus OpenAI's `{"error": {message, type, param, code}}`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def unsupported(what: str, param: str) -> APIError:
    return bad(f"{what} is not supported by this server", param=param, code="unsupported_parameter")


def refused(e: SpecgenError, names: dict[str, str] | None = None) -> APIError:
    """A setting the library refused, as a 400 naming the request field: the setting's own name (the API
    spells them alike) unless *names* gives the field it came from."""
    names = names or {}
    return bad(e.worded(names), param=names.get(e.setting, e.setting))


@dataclass(frozen=True)
class GenRequest:
    """One generation, as the worker needs it."""
    kind: Literal["chat", "completion"]
    messages: tuple[Message, ...] = ()
    prompt: str = ""
    max_tokens: int | None = None
    """None: until end-of-generation or a full context."""
    sampling: SamplingParams = SamplingParams()
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    drafter: str | None = None
    """None: the server's drafter."""
    draft_max: int | None | Literal["server"] = "server"
    """'server': the server's setting; None: sized each step; n: a fixed cap."""
    ignore_eos: bool = False
    cache_prompt: bool = True
    model: str = ""


# -- field readers: absent and null mean "not given", as OpenAI treats them ----------------------

def _get(body: dict, name: str) -> Any:
    return body.get(name)


def _int(body: dict, name: str) -> int | None:
    v = _get(body, name)
    if v is None:
        return None
    if isinstance(v, bool) or not (isinstance(v, int) or isinstance(v, float) and v.is_integer()):
        raise bad(f"{name} must be an integer, not {kind_of(v)}", param=name)
    return int(v)


def _num(body: dict, name: str) -> float | None:
    v = _get(body, name)
    if v is None:
        return None
    if not is_finite_number(v):  # JSON's NaN and Infinity are named (1e999 reads as Infinity)
        raise bad(f"{name} must be a finite number, not {kind_of(v)}", param=name)
    return float(v)


def _bool(body: dict, name: str) -> bool | None:
    v = _get(body, name)
    if v is None:
        return None
    if not isinstance(v, bool):
        raise bad(f"{name} must be true or false, not {kind_of(v)}", param=name)
    return v


def _str(body: dict, name: str) -> str | None:
    v = _get(body, name)
    if v is None:
        return None
    if not isinstance(v, str):
        raise bad(f"{name} must be a string, not {kind_of(v)}", param=name)
    return v


# -- the parts both endpoints share -----------------------------------------------------------

def validate_sampling(p: SamplingParams) -> SamplingParams:
    """The sampling bounds every front end shares; the error names the request field (the same name)."""
    try:
        return p.check()
    except SpecgenError as e:
        raise refused(e) from None


def sampling_from(body: dict, defaults: SamplingParams) -> SamplingParams:
    """Request fields over the server's defaults (its --temperature etc.)."""
    seed = _int(body, "seed")
    if seed is not None and seed < 0:
        if seed != -1:
            raise bad("seed must be 0 or more (or -1 for a random seed)", param="seed")
        seed = None  # llama-server's convention for "random"
    changes: dict[str, Any] = {}
    for name in ("temperature", "top_p", "min_p", "repeat_penalty"):
        v = _num(body, name)
        if v is not None:
            changes[name] = v
    top_k = _int(body, "top_k")
    if top_k is not None:
        changes["top_k"] = top_k
    if "seed" in body:
        changes["seed"] = seed
    return validate_sampling(dataclasses.replace(defaults, **changes))


def _refuse_unsupported(body: dict) -> None:
    n = _int(body, "n")
    if n is not None and n != 1:
        raise unsupported("n other than 1 (several choices per request)", "n")
    for name, what in (("tools", "tools (function calling)"), ("functions", "functions (function calling)"),
                       ("logit_bias", "logit_bias")):
        if body.get(name):
            raise unsupported(what, name)
    for name in ("tool_choice", "function_call"):
        if body.get(name) not in (None, "none"):
            raise unsupported(f"{name} (function calling)", name)
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise unsupported("response_format other than text (JSON mode, JSON schema)", "response_format")
    if body.get("logprobs") not in (None, False, 0) or body.get("top_logprobs") is not None:
        raise unsupported("logprobs", "logprobs")
    for name in ("presence_penalty", "frequency_penalty"):
        v = _num(body, name)
        if v:
            raise unsupported(f"{name} (use repeat_penalty)", name)


def _stop(body: dict) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise bad("stop must be a string or an array of strings", param="stop")
    if len(items) > MAX_STOP:
        raise bad(f"stop takes at most {MAX_STOP} strings, not {len(items)}", param="stop")
    if any(s == "" for s in items):
        raise bad("stop strings must not be empty", param="stop")
    return tuple(items)


def _common(body: dict, defaults: SamplingParams) -> dict:
    _refuse_unsupported(body)
    model = _str(body, "model") or ""
    max_tokens = _int(body, "max_completion_tokens")
    name = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, name = _int(body, "max_tokens"), "max_tokens"
    if max_tokens is not None:
        try:
            check_count("max_tokens", max_tokens)
        except SpecgenError as e:
            raise refused(e, {"max_tokens": name}) from None
    stream = bool(_bool(body, "stream"))
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not stream:
            raise bad("stream_options is only allowed when stream is true", param="stream_options")
        if not isinstance(opts, dict):
            raise bad(f"stream_options must be an object, not {kind_of(opts)}", param="stream_options")
        include_usage = bool(_bool(opts, "include_usage"))
    drafter = _str(body, "drafter")
    draft_max: int | None | str = "server"
    if body.get("draft_max") is not None:
        try:
            draft_max = parse_draft_max(body["draft_max"])
        except SpecgenError as e:
            raise refused(e) from None
    return dict(model=model, max_tokens=max_tokens, sampling=sampling_from(body, defaults), stop=_stop(body),
                stream=stream, include_usage=include_usage, drafter=drafter, draft_max=draft_max,
                ignore_eos=bool(_bool(body, "ignore_eos")),
                cache_prompt=_bool(body, "cache_prompt") is not False)


# -- the endpoints ------------------------------------------------------------------------------

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _content(m: dict, where: str) -> str:
    c = m.get("content")
    if isinstance(c, str):
        return c
    if c is None and m.get("role") == "assistant" and not m.get("tool_calls"):
        return ""
    if not isinstance(c, list):
        raise bad(f"{where}.content must be a string or an array of text parts, not {kind_of(c)}",
                  param=f"{where}.content")
    texts = []
    for j, part in enumerate(c):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("image_url", "input_image", "image"):
            raise unsupported("image input", f"{where}.content[{j}]")
        elif kind in ("input_audio", "audio", "file"):
            raise unsupported(f"{kind} input", f"{where}.content[{j}]")
        else:
            raise bad(f"{where}.content[{j}] must be a text part ({{\"type\": \"text\", \"text\": \"...\"}})",
                      param=f"{where}.content[{j}]")
    return "".join(texts)


def parse_chat(body: Any, defaults: SamplingParams) -> GenRequest:
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, not {kind_of(body)}")
    msgs = body.get("messages")
    if msgs is None:
        raise bad("messages is required: an array of {role, content} objects", param="messages")
    if not isinstance(msgs, list):
        raise bad(f"messages must be an array, not {kind_of(msgs)}", param="messages")
    if not msgs:
        raise bad("messages must not be empty", param="messages")
    out: list[Message] = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(f"{where} must be an object with role and content, not {kind_of(m)}", param=where)
        role = m.get("role")
        if role in ("tool", "function") or (role == "assistant" and m.get("tool_calls")):
            raise unsupported("tool messages (function calling)", f"{where}.role")
        if role not in ROLES:
            raise bad(f"{where}.role must be one of system, developer, user, assistant, not {role!r}",
                      param=f"{where}.role")
        out.append({"role": ROLES[role], "content": _content(m, where)})
    return GenRequest(kind="chat", messages=tuple(out), **_common(body, defaults))


def parse_completion(body: Any, defaults: SamplingParams) -> GenRequest:
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, not {kind_of(body)}")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list) and prompt and not all(isinstance(p, str) for p in prompt):
        raise unsupported("a prompt of token ids", "prompt")
    if isinstance(prompt, list) and len(prompt) > 1:
        raise unsupported("a batch of prompts", "prompt")
    if not isinstance(prompt, str):
        raise bad(f"prompt must be a string, not {kind_of(prompt)}", param="prompt")
    if not prompt:
        raise bad("prompt must not be empty", param="prompt")
    if body.get("echo"):
        raise unsupported("echo", "echo")
    if body.get("suffix"):
        raise unsupported("suffix (fill in the middle)", "suffix")
    best_of = _int(body, "best_of")
    if best_of is not None and best_of != 1:
        raise unsupported("best_of other than 1", "best_of")
    return GenRequest(kind="completion", prompt=prompt, **_common(body, defaults))


__all__ = ["APIError", "GenRequest", "bad", "parse_chat", "parse_completion", "refused", "sampling_from",
           "validate_sampling"]
