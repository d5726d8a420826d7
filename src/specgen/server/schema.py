"""OpenAI request bodies in, checked requests out; every refusal is an OpenAI-shaped error.

What the server cannot honour (n > 1, images, logit_bias) is refused with a
message that says so, never silently dropped; fields it does not know are
ignored, as OpenAI does.  Tool turns are normalized here to what chat
templates read (a call's arguments as an object, a result with its call's
name), so a template never sees a shape its authors did not write for.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import SpecgenError, is_finite_number, kind_of
from ..formats.infill import Infill, parse_extra
from ..formats.structured import JSON_OBJECT_GRAMMAR, SchemaError, schema_grammar
from ..llama.chat_template import Message
from ..sampling import SamplingParams
from ..settings import check_count, parse_draft_max
from ..textstream import Lines

MAX_STOP = 4  # OpenAI's limit on stop sequences
MAX_TOP_LOGPROBS = 20  # OpenAI's limit on top_logprobs (chat)
MAX_COMPLETION_LOGPROBS = 20  # OpenAI takes 5 for the legacy endpoint, llama-server more; one ceiling for both
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""OpenAI's rule for a function's name."""


class APIError(Exception):
    """An error response: HTTP status plus OpenAI's `{"error": {message, type, param, code}}`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None,
                 overflow: tuple[int, int] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.overflow = overflow
        """(prompt tokens, context size) of a prompt too long: each API words it as its clients recognise."""
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
    kind: Literal["chat", "completion", "infill"]
    messages: tuple[Message, ...] = ()
    prompt: str = ""
    infill: Infill | None = None
    """The code around the cursor, for kind "infill" (/infill, or /v1/completions with a suffix)."""
    lines: Lines | None = None
    """An editor's line rules: n_indent, max_lines, t_max_predict_ms."""
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
    exact: bool | None = None
    """None: as the server was started (--exact); True needs a server started so."""
    model: str = ""
    tools: tuple[dict, ...] = ()
    """OpenAI chat tools ({"type": "function", "function": {name, description?, parameters?}})."""
    tool_choice: str | dict = "auto"
    """"auto", "none", "required", or {"name": fn}: that function and no other."""
    parallel_tool_calls: bool = False
    """Whether a forced tool_choice may make several calls; one, unless asked (llama-server's default)."""
    grammar: str | None = None
    """GBNF that every generated token obeys (response_format, or the tool calls tool_choice forces)."""
    logprobs: int | None = None
    """None: no logprobs; n: each token's logprob with the n most likely alternatives."""

    @property
    def uses_tools(self) -> bool:
        """Tools are shown to the model and its calls parsed out of the reply."""
        return bool(self.tools) and self.tool_choice != "none"


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
    for name in ("temperature", "top_p", "min_p", "repeat_penalty", "frequency_penalty", "presence_penalty"):
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
    if body.get("logit_bias"):
        raise unsupported("logit_bias", "logit_bias")
    for name in ("functions", "function_call"):
        if body.get(name) is not None:
            raise unsupported(f"{name} (the deprecated form of function calling; send tools and tool_choice)", name)


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


def _common(body: dict, defaults: SamplingParams, kind: str) -> dict:
    _refuse_unsupported(body)
    model = _str(body, "model") or ""
    max_tokens, name = None, "max_tokens"
    for name in ("max_completion_tokens", "max_tokens", "n_predict"):  # n_predict: llama-server's; -1 is no cap
        max_tokens = _int(body, name)
        if max_tokens is not None:
            break
    if name == "n_predict" and max_tokens == -1:
        max_tokens = None
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
                lines=_lines(body) if kind != "chat" else None,
                stream=stream, include_usage=include_usage, drafter=drafter, draft_max=draft_max,
                ignore_eos=bool(_bool(body, "ignore_eos")),
                cache_prompt=_bool(body, "cache_prompt") is not False, exact=_bool(body, "exact"),
                grammar=_grammar(body), logprobs=_logprobs(body, kind))


def _lines(body: dict) -> Lines | None:
    """llama-server's `n_indent` and `t_max_predict_ms` (0 or less: off), and `max_lines`."""
    ms = _num(body, "t_max_predict_ms")
    lines = Lines(_int(body, "n_indent") or 0, _int(body, "max_lines") or 0, max(ms or 0.0, 0.0) / 1e3)
    try:
        lines.check()
    except SpecgenError as e:
        raise refused(e) from None
    return lines if lines.active else None


def _grammar(body: dict) -> str | None:
    """The grammar the output must obey: from response_format, or llama-server's own `json_schema` (a
    schema) and `grammar` (GBNF) fields, which its clients send; at most one of the three."""
    given = [name for name in ("response_format", "json_schema", "grammar") if body.get(name) is not None]
    if len(given) > 1:
        raise bad(f"{' and '.join(given)} cannot be combined: give one", param=given[1])
    if body.get("grammar") is not None:
        gbnf = _str(body, "grammar")
        return gbnf or None
    if body.get("json_schema") is not None:
        return _schema(body["json_schema"], "json_schema")
    return _response_format(body)


def _schema(schema: object, where: str) -> str:
    try:
        return schema_grammar(schema)
    except SchemaError as e:
        at = where + (f".{e.where}" if e.where else "")
        raise bad(f"{at}: {e}", param=at) from None


def _response_format(body: dict) -> str | None:
    """The grammar a JSON response_format asks for; None for text."""
    fmt = body.get("response_format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise bad(f"response_format must be an object, not {kind_of(fmt)}", param="response_format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_OBJECT_GRAMMAR
    if kind != "json_schema":
        raise bad(f"response_format.type must be text, json_object or json_schema, not {shown(kind)}",
                  param="response_format.type")
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        raise bad("response_format.json_schema must be an object with a schema", param="response_format.json_schema")
    schema = spec.get("schema")
    if schema is None:  # OpenAI: no schema means any JSON object
        return JSON_OBJECT_GRAMMAR
    return _schema(schema, "response_format.json_schema.schema")


def _logprobs(body: dict, kind: str) -> int | None:
    """Chat: logprobs true plus top_logprobs n; completions: logprobs n (its own, older form)."""
    if kind == "completion":
        n = _int(body, "logprobs")
        if n is not None and not 0 <= n <= MAX_COMPLETION_LOGPROBS:
            raise bad(f"logprobs must be from 0 to {MAX_COMPLETION_LOGPROBS}, not {n}", param="logprobs")
        return n
    on, top = _bool(body, "logprobs"), _int(body, "top_logprobs")
    if top is not None:
        if not on:
            raise bad("top_logprobs needs logprobs set to true", param="top_logprobs")
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise bad(f"top_logprobs must be from 0 to {MAX_TOP_LOGPROBS}, not {top}", param="top_logprobs")
    return (top or 0) if on else None


def shown(v: object) -> str:
    return repr(v) if isinstance(v, str) else kind_of(v)


# -- the endpoints ------------------------------------------------------------------------------

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


def _content(m: dict, where: str) -> str:
    c = m.get("content")
    if isinstance(c, str):
        return c
    if c is None and m.get("role") == "assistant":  # a reply that only called tools, or said nothing
        return ""
    if not isinstance(c, list):
        raise bad(f"{where}.content must be a string or an array of text parts, not {kind_of(c)}",
                  param=f"{where}.content")
    texts = []
    for j, part in enumerate(c):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text", "output_text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("image_url", "input_image", "image"):
            raise unsupported("image input", f"{where}.content[{j}]")
        elif kind in ("input_audio", "audio", "file", "input_file"):
            raise unsupported(f"{kind} input", f"{where}.content[{j}]")
        else:
            raise bad(f"{where}.content[{j}] must be a text part ({{\"type\": \"text\", \"text\": \"...\"}})",
                      param=f"{where}.content[{j}]")
    return "".join(texts)


def json_object(text: object, where: str) -> dict:
    """A tool call's arguments: JSON text of an object (templates write them back as an object)."""
    if not isinstance(text, str):
        raise bad(f"{where} must be a string of JSON, not {kind_of(text)}", param=where)
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError as e:
        raise bad(f"{where} is not valid JSON ({e})", param=where) from None
    if not isinstance(value, dict):
        raise bad(f"{where} must be a JSON object, not {kind_of(value)}", param=where)
    return value


def _tool_calls(calls: object, where: str) -> list[dict]:
    if not isinstance(calls, list):
        raise bad(f"{where} must be an array, not {kind_of(calls)}", param=where)
    out = []
    for j, call in enumerate(calls):
        at = f"{where}[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or call.get("type", "function") != "function":
            raise bad(f"{at} must be {{\"id\", \"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}",
                      param=at)
        call_id, name = call.get("id"), fn.get("name")
        if not isinstance(call_id, str) or not call_id:
            raise bad(f"{at}.id must be a non-empty string", param=f"{at}.id")
        if not isinstance(name, str) or not name:
            raise bad(f"{at}.function.name must be a non-empty string", param=f"{at}.function.name")
        out.append({"id": call_id, "type": "function",
                    "function": {"name": name, "arguments": json_object(fn.get("arguments"),
                                                                        f"{at}.function.arguments")}})
    return out


def parse_messages(msgs: object) -> tuple[Message, ...]:
    """OpenAI chat messages, checked and normalized for a chat template."""
    if msgs is None:
        raise bad("messages is required: an array of {role, content} objects", param="messages")
    if not isinstance(msgs, list):
        raise bad(f"messages must be an array, not {kind_of(msgs)}", param="messages")
    if not msgs:
        raise bad("messages must not be empty", param="messages")
    out: list[Message] = []
    called: dict[str, str] = {}  # tool call id -> function name, from the assistant turns so far
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(f"{where} must be an object with role and content, not {kind_of(m)}", param=where)
        role = m.get("role")
        if role == "function":
            raise unsupported("function messages (the deprecated form of tool results; send role tool)",
                              f"{where}.role")
        if role not in ROLES:
            raise bad(f"{where}.role must be one of system, developer, user, assistant, tool, not {shown(role)}",
                      param=f"{where}.role")
        msg: Message = {"role": ROLES[role], "content": _content(m, where)}
        if role == "assistant" and m.get("tool_calls"):
            msg["tool_calls"] = _tool_calls(m["tool_calls"], f"{where}.tool_calls")
            called.update((c["id"], c["function"]["name"]) for c in msg["tool_calls"])
        elif role == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in called:
                known = ", ".join(called) or "none"
                raise bad(f"{where}.tool_call_id {shown(call_id)} answers no tool call of an earlier assistant "
                          f"message (their ids: {known})", param=f"{where}.tool_call_id")
            msg["tool_call_id"], msg["name"] = call_id, called[call_id]
        out.append(msg)
    return tuple(out)


def parse_tools(body: dict) -> dict:
    """tools and tool_choice, checked: {"tools": (...), "tool_choice": ...} for GenRequest."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is None or tools == []:
        if choice not in (None, "none", "auto"):
            raise bad("tool_choice needs tools", param="tool_choice")
        return {}
    if not isinstance(tools, list):
        raise bad(f"tools must be an array, not {kind_of(tools)}", param="tools")
    out, names = [], set()
    for i, t in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(t, dict) or t.get("type") != "function":
            kind = t.get("type") if isinstance(t, dict) else None
            if isinstance(kind, str) and kind != "function":
                raise unsupported(f"a tool of type {kind!r} (function tools only)", f"{where}.type")
            raise bad(f"{where} must be {{\"type\": \"function\", \"function\": {{\"name\", \"parameters\"}}}}",
                      param=where)
        fn = t.get("function")
        if not isinstance(fn, dict):
            raise bad(f"{where}.function must be an object with a name", param=f"{where}.function")
        name = fn.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise bad(f"{where}.function.name must be 1 to 64 letters, digits, _ or -, not {shown(name)}",
                      param=f"{where}.function.name")
        if name in names:
            raise bad(f"{where}.function.name {name!r} is given twice", param=f"{where}.function.name")
        names.add(name)
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise bad(f"{where}.function.parameters must be a JSON Schema object, not {kind_of(params)}",
                      param=f"{where}.function.parameters")
        desc = fn.get("description")
        if desc is not None and not isinstance(desc, str):
            raise bad(f"{where}.function.description must be a string", param=f"{where}.function.description")
        clean = {"name": name, **({"description": desc} if desc is not None else {}),
                 "parameters": params if params is not None else {"type": "object", "properties": {}}}
        out.append({"type": "function", "function": clean})
    return {"tools": tuple(out), "tool_choice": _tool_choice(choice, names),
            "parallel_tool_calls": bool(_bool(body, "parallel_tool_calls"))}


def _tool_choice(choice: object, names: set[str]) -> str | dict:
    if choice is None:
        return "auto"
    if choice in ("auto", "none", "required"):
        return choice
    fn = choice.get("function") if isinstance(choice, dict) else None
    name = fn.get("name") if isinstance(fn, dict) else None
    if not isinstance(name, str):
        raise bad('tool_choice must be "auto", "none", "required" or {"type": "function", "function": {"name"}}',
                  param="tool_choice")
    if name not in names:
        raise bad(f"tool_choice names {name!r}, which is not among the tools ({', '.join(sorted(names))})",
                  param="tool_choice")
    return {"name": name}


def parse_chat(body: Any, defaults: SamplingParams) -> GenRequest:
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, not {kind_of(body)}")
    messages = parse_messages(body.get("messages"))
    tools = parse_tools(body)
    common = _common(body, defaults, "chat")
    if common["grammar"] is not None and tools and tools["tool_choice"] != "none":
        raise bad("response_format (JSON) and tools cannot be combined: the reply is either JSON or tool calls",
                  param="response_format")
    return GenRequest(kind="chat", messages=messages, **tools, **common)


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
    suffix = _str(body, "suffix")
    if not prompt and not suffix:
        raise bad("prompt must not be empty", param="prompt")
    if body.get("echo"):
        raise unsupported("echo", "echo")
    best_of = _int(body, "best_of")
    if best_of is not None and best_of != 1:
        raise unsupported("best_of other than 1", "best_of")
    if suffix is not None:  # OpenAI's way to ask for an infill: the text goes between prompt and suffix
        return GenRequest(kind="infill", infill=Infill(prompt, suffix), **_common(body, defaults, "completion"))
    return GenRequest(kind="completion", prompt=prompt, **_common(body, defaults, "completion"))


def parse_infill(body: Any, defaults: SamplingParams) -> GenRequest:
    """llama-server's /infill: `input_prefix`, `input_suffix`, `input_extra`, `prompt` and /completion's
    fields."""
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, not {kind_of(body)}")
    parts = {}
    for name in ("input_prefix", "input_suffix"):
        if name not in body:
            raise bad(f"{name} is required: the code before and after the cursor", param=name)
        parts[name] = _str(body, name) or ""
    typed = _str(body, "prompt") or ""
    try:
        extra = parse_extra(body.get("input_extra"), "input_extra")
    except SpecgenError as e:
        raise bad(str(e), param="input_extra") from None
    if not (parts["input_prefix"] or parts["input_suffix"] or typed or extra):
        raise bad("input_prefix, input_suffix, prompt and input_extra are all empty: nothing to fill in around",
                  param="input_prefix")
    infill = Infill(parts["input_prefix"], parts["input_suffix"], extra, typed)
    return GenRequest(kind="infill", infill=infill, **_common(body, defaults, "completion"))


__all__ = ["APIError", "GenRequest", "bad", "json_object", "parse_chat", "parse_completion", "parse_infill",
           "parse_messages", "parse_tools", "refused", "sampling_from", "validate_sampling"]
