"""Anthropic's Messages API (`POST /v1/messages`, and `/v1/messages/count_tokens`): its body read as a
chat request, the reply as a `message` or the event stream Anthropic's SDK accumulates.

Only tools the client defines run here; Anthropic's own (web search, code
execution, its computer and editor tools) are refused.  `thinking`,
`metadata` and cache hints are accepted and ignored: the prompt cache is
automatic, and what it reused is reported as `cache_read_input_tokens`.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any

from ..errors import kind_of
from ..formats.tools import CallDelta
from ..sampling import SamplingParams
from .openai_api import specgen_stats, sse, timings
from .reply import Assembler, End, ReplyEvent, Text
from .schema import APIError, GenRequest, bad, shown, unsupported
from .translate import Translation

if TYPE_CHECKING:
    from ..engine import Summary
    from .worker import Job

PATH = "/v1/messages"
"""This API's routes start so; each error on them takes Anthropic's shape."""
ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error"}
"""Anthropic's error type per HTTP status, beside invalid_request_error (other 4xx) and api_error (5xx)."""
SKIPPED = ("thinking", "redacted_thinking")
"""Content blocks of an assistant turn that the model is not shown again."""


def error_body(e: APIError) -> dict:
    kind = ERROR_TYPES.get(e.status, "invalid_request_error" if e.status < 500 else "api_error")
    message = e.message
    if e.overflow is not None:  # Anthropic's own wording, which its coding agent reads to compact the conversation
        message = f"prompt is too long: {e.overflow[0]} tokens > {e.overflow[1]} maximum"
    return {"type": "error", "error": {"type": kind, "message": message}}


# -- the request ----------------------------------------------------------------------------------

def parse_anthropic(body: Any, defaults: SamplingParams) -> GenRequest:
    t = _translate(body)
    if t.chat.get("max_tokens") is None:
        raise bad("max_tokens is required: the most tokens the reply may have", param="max_tokens")
    return t.parse(defaults)


def parse_count_tokens(body: Any, defaults: SamplingParams) -> GenRequest:
    """A Messages body without a reply's settings: the prompt it would make."""
    return _translate(body).parse(defaults)


def _translate(body: Any) -> Translation:
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, not {kind_of(body)}")
    t = Translation(body, ("model", "stream", "max_tokens", "temperature", "top_p"))
    system = body.get("system")
    if system is not None:
        t.message({"role": "system", "content": system}, "system", {"content": "system"})
    msgs = body.get("messages")
    if not isinstance(msgs, list):
        raise bad("messages is required: an array of {role, content} objects" if msgs is None else
                  f"messages must be an array, not {kind_of(msgs)}", param="messages")
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(f"{where} must be an object with role and content, not {kind_of(m)}", param=where)
        role, content = m.get("role"), m.get("content")
        if role not in ("user", "assistant"):
            raise bad(f"{where}.role must be user or assistant, not {shown(role)}", param=f"{where}.role")
        if isinstance(content, str):
            t.message({"role": role, "content": content}, where)
        elif not isinstance(content, list):
            raise bad(f"{where}.content must be a string or an array of content blocks, not {kind_of(content)}",
                      param=f"{where}.content")
        else:
            _turn(t, role, content, where)
    config = body.get("output_config")
    t.json_format(config.get("format") if isinstance(config, dict) else None, "output_config.format")
    if body.get("stop_sequences") is not None:
        t.chat["stop"] = body["stop_sequences"]
        t.name("stop", "stop_sequences")
    _tools(t, body)
    return t


def _blocks(content: list, where: str) -> list[tuple[str, dict, str]]:
    """(type, block, path) for each content block."""
    out = []
    for j, b in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(b, dict) or not isinstance(b.get("type"), str):
            raise bad(f"{at} must be a content block ({{\"type\": \"text\", \"text\": \"...\"}}, ...)", param=at)
        out.append((b["type"], b, at))
    return out


def _turn(t: Translation, role: str, content: list, where: str) -> None:
    """One turn of content blocks.  Its tool results come first, right after the turn that called the tools,
    as Anthropic requires them to; a user turn's text follows them."""
    parts: list[dict] = []
    calls: list[dict] = []
    names: dict[str, str] = {}
    for kind, b, at in _blocks(content, where):
        if kind == "text":
            names[f"content[{len(parts)}]"] = at
            parts.append(b)
        elif kind == "tool_use" and role == "assistant":
            args = b.get("input", {})
            if not isinstance(args, dict):
                raise bad(f"{at}.input must be an object, not {kind_of(args)}", param=f"{at}.input")
            call = f"tool_calls[{len(calls)}]"
            names.update({call: at, f"{call}.function": at})
            calls.append({"id": b.get("id"), "type": "function",
                          "function": {"name": b.get("name"), "arguments": json.dumps(args, ensure_ascii=False)}})
        elif kind == "tool_result" and role == "user":
            result = b.get("content", "")
            fields = {"tool_call_id": f"{at}.tool_use_id", "content": f"{at}.content"}
            if b.get("is_error") and isinstance(result, (str, list)):  # no template has a place for the flag
                result = [{"type": "text", "text": "Error: "},
                          *([{"type": "text", "text": result}] if isinstance(result, str) else result)]
                fields.update({f"content[{k + 1}]": f"{at}.content[{k}]" for k in range(len(result) - 1)})
            t.message({"role": "tool", "tool_call_id": b.get("tool_use_id"), "content": result}, at, fields)
        elif kind in ("image", "document"):
            raise unsupported(f"{kind} input", at)
        elif not (role == "assistant" and kind in SKIPPED):
            raise bad(f"{at} is a {kind!r} block, which {'an' if role == 'assistant' else 'a'} {role} turn "
                      "cannot hold", param=f"{at}.type")
    msg: dict = {"role": role, "content": parts}
    if calls:
        msg["tool_calls"] = calls
    if parts or role == "assistant":
        t.message(msg, where, names)


def _tools(t: Translation, body: dict) -> None:
    tools = body.get("tools")
    if isinstance(tools, list):
        out = []
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise bad(f"tools[{i}] must be {{\"name\", \"description\", \"input_schema\"}}", param=f"tools[{i}]")
            if tool.get("type", "custom") != "custom":
                raise unsupported(f"the Anthropic-defined tool {shown(tool['type'])}", f"tools[{i}].type")
            fn = {k: tool[k] for k in ("name", "description") if k in tool}
            out.append({"type": "function", "function": {**fn, "parameters": tool.get("input_schema")}})
            t.name(f"tools[{i}].function", f"tools[{i}]")
            t.name(f"tools[{i}].function.parameters", f"tools[{i}].input_schema")
        tools = out
    t.chat["tools"] = tools
    choice = body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "tool" and isinstance(choice.get("name"), str):
        t.chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif kind in ("auto", "any", "none"):
        t.chat["tool_choice"] = "required" if kind == "any" else kind
    elif choice is not None:
        raise bad('tool_choice must be {"type": "auto"}, {"type": "any"}, {"type": "tool", "name"} or '
                  '{"type": "none"}', param="tool_choice")


# -- the reply ------------------------------------------------------------------------------------

class AnthropicReply:
    """One request's `message`, whole or as its stream of events."""

    def __init__(self, req: GenRequest, model: str, job: "Job"):
        self.req, self.model, self.job = req, model, job
        self.id = f"msg_{secrets.token_hex(12)}"
        self._index = -1  # the open content block; -1 before the first
        self._open: str | None = None  # its type

    error_body = staticmethod(error_body)

    # -- streams --------------------------------------------------------------------------------

    def start(self) -> list[bytes]:
        message = {**self._head(), "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": self.job.prompt_tokens, "output_tokens": 0}}
        return [_send("message_start", message=message)]

    def event(self, ev: ReplyEvent) -> list[bytes]:
        if isinstance(ev, Text):
            if not ev.text:
                return []
            out = [] if self._open == "text" else self._begin({"type": "text", "text": ""})
            return [*out, _send("content_block_delta", index=self._index, delta={"type": "text_delta",
                                                                                   "text": ev.text})]
        if isinstance(ev, CallDelta):
            out = []
            if ev.id is not None:
                out = self._begin({"type": "tool_use", "id": _tool_id(ev.id), "name": ev.name, "input": {}})
            if ev.arguments:
                out.append(_send("content_block_delta", index=self._index,
                                 delta={"type": "input_json_delta", "partial_json": ev.arguments}))
            return out
        assert isinstance(ev, End)
        reason, stop = self._stop(ev)
        return [*self._close(), _send("message_delta", delta={"stop_reason": reason, "stop_sequence": stop},
                                      usage=_usage(ev.summary)), _send("message_stop")]

    def failed(self, e: APIError) -> bytes:
        return sse(error_body(e), event="error")

    def _begin(self, block: dict) -> list[bytes]:
        out = self._close()
        self._index += 1
        self._open = block["type"]
        return [*out, _send("content_block_start", index=self._index, content_block=block)]

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = None
        return [_send("content_block_stop", index=self._index)]

    # -- whole responses ------------------------------------------------------------------------

    def whole(self, reply: Assembler, end: End) -> dict:
        content = [{"type": "text", "text": reply.content}] if reply.content else []
        content += [{"type": "tool_use", "id": _tool_id(c.id), "name": c.name, "input": json.loads(c.arguments)}
                    for c in end.calls]
        reason, stop = self._stop(end)
        s = end.summary
        return {**self._head(), "content": content, "stop_reason": reason, "stop_sequence": stop,
                "usage": _usage(s), "timings": timings(s), "specgen": specgen_stats(s, self.job.drafter)}

    def _head(self) -> dict:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model}

    def _stop(self, end: End) -> tuple[str, str | None]:
        """stop_reason and the stop sequence that ended the reply (None for any other reason)."""
        why = end.summary.stop_reason
        if end.finish == "tool_calls":
            return "tool_use", None
        if why == "context":
            return "model_context_window_exceeded", None
        if why != "stop":
            return ("max_tokens" if end.finish == "length" else "end_turn"), None
        return "stop_sequence", end.summary.stop_string or None


def _send(kind: str, **fields: Any) -> bytes:
    return sse({"type": kind, **fields}, event=kind)


def _tool_id(call_id: str) -> str:
    """Anthropic's form of a call's id (the same call, whichever API names it)."""
    return "toolu_" + call_id.removeprefix("call_")


def _usage(s: "Summary") -> dict:
    return {"input_tokens": s.prompt_tokens - s.reused_tokens, "output_tokens": s.generated_tokens,
            "cache_read_input_tokens": s.reused_tokens, "cache_creation_input_tokens": 0}


__all__ = ["AnthropicReply", "PATH", "error_body", "parse_anthropic", "parse_count_tokens"]
