"""OpenAI's Responses API (`POST /v1/responses`): its body read as a chat request, the reply as a
`response` object or the typed event stream OpenAI's SDK parses.

The server keeps no responses, so `previous_response_id` is refused: a client
sends the whole conversation as `input` (as agents that run without OpenAI's
storage do).  Only function tools exist here; the hosted ones are refused.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

from ..engine import Summary, TokenLogprob
from ..errors import kind_of
from ..formats.tools import CallDelta
from ..sampling import SamplingParams
from .openai_api import chat_logprob, specgen_stats, sse, timings
from .reply import Assembler, End, ReplyEvent, Text
from .schema import APIError, GenRequest, bad, shown, unsupported
from .translate import Translation

if TYPE_CHECKING:
    from .worker import Job

LOGPROBS = "message.output_text.logprobs"
"""The `include` entry that asks for the output text's logprobs."""
STATELESS = {"previous_response_id": "previous_response_id", "conversation": "conversation",
             "prompt": "prompt (stored prompt templates)", "background": "background responses"}
"""What only a server that keeps responses can do, and how the refusal names it."""
ROLES = ("user", "assistant", "system", "developer")
"""The roles a message item may have."""


# -- the request ----------------------------------------------------------------------------------

def parse_responses(body: Any, defaults: SamplingParams) -> GenRequest:
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, not {kind_of(body)}")
    for name, what in STATELESS.items():
        if body.get(name):
            raise bad(f"{what} is not supported by this server: it keeps no past responses, so send the whole "
                      "conversation as input", param=name, code="unsupported_parameter")
    t = Translation(body, ("model", "stream", "temperature", "top_p", "top_logprobs"))
    t.name("messages", "input")
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise bad(f"instructions must be a string, not {kind_of(instructions)}", param="instructions")
        t.message({"role": "system", "content": instructions}, "instructions", {"content": "instructions"})
    _input(t, body.get("input"))
    _tools(t, body)
    if body.get("max_output_tokens") is not None:
        t.chat["max_tokens"] = body["max_output_tokens"]
        t.name("max_tokens", "max_output_tokens")
    text = body.get("text")
    t.json_format(text.get("format") if isinstance(text, dict) else text, "text.format")
    include = body.get("include")
    if isinstance(include, list) and LOGPROBS in include or body.get("top_logprobs") is not None:
        t.chat["logprobs"] = True
    return t.parse(defaults)


def _input(t: Translation, items: object) -> None:
    if isinstance(items, str):
        t.message({"role": "user", "content": items}, "input", {"content": "input"})
        return
    if items is None:
        return  # no messages: the chat rules say what is missing
    if not isinstance(items, list):
        raise bad(f"input must be a string or an array of items, not {kind_of(items)}", param="input")
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad(f"{where} must be an object, not {kind_of(item)}", param=where)
        kind = item.get("type", "message")
        if kind == "message":
            if item.get("role") not in ROLES:
                raise bad(f"{where}.role must be one of {', '.join(ROLES)}, not {shown(item.get('role'))}",
                          param=f"{where}.role")
            t.message({"role": item.get("role"), "content": item.get("content")}, where)
        elif kind == "function_call":
            last = t.messages[-1] if t.messages else None
            if last is None or last["role"] != "assistant":  # calls after the reply's text join its turn
                last = t.message({"role": "assistant", "content": ""}, where)
            calls = last.setdefault("tool_calls", [])
            at = f"messages[{len(t.messages) - 1}].tool_calls[{len(calls)}]"
            calls.append({"id": item.get("call_id"), "type": "function",
                          "function": {"name": item.get("name"), "arguments": item.get("arguments")}})
            t.name(at, where)
            t.name(f"{at}.id", f"{where}.call_id")
            t.name(f"{at}.function", where)
        elif kind == "function_call_output":
            t.message({"role": "tool", "tool_call_id": item.get("call_id"), "content": item.get("output")}, where,
                      {"tool_call_id": f"{where}.call_id", "content": f"{where}.output"})
        elif kind != "reasoning":  # the model's hidden reasoning, sent back by clients: nothing to show it
            raise unsupported(f"an input item of type {shown(kind)}", f"{where}.type")


def _tools(t: Translation, body: dict) -> None:
    tools = body.get("tools")
    if isinstance(tools, list):
        out: list[object] = []
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
                raise bad(f'tools[{i}] must be {{"type": "function", "name", "parameters"}}', param=f"tools[{i}]")
            if tool["type"] == "function":
                tool = {"type": "function", "function": {k: tool[k] for k in ("name", "description", "parameters")
                                                         if k in tool}}
            out.append(tool)
            t.name(f"tools[{i}].function", f"tools[{i}]")
        tools = out
    t.chat["tools"] = tools
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        choice = {"type": "function", "function": {"name": choice["name"]}}
    elif choice is not None and choice not in ("auto", "none", "required"):
        raise bad('tool_choice must be "auto", "none", "required" or {"type": "function", "name"}',
                  param="tool_choice")
    t.chat["tool_choice"] = choice


# -- the reply ------------------------------------------------------------------------------------

class ResponsesReply:
    """One request's `response` object, or its stream of typed events."""

    def __init__(self, req: GenRequest, model: str, job: "Job"):
        self.req, self.model, self.job = req, model, job
        self.id = f"resp_{secrets.token_hex(12)}"
        self.created = int(time.time())
        self._seq = 0
        self._items: list[dict] = []  # finished output items, in order
        self._open: dict | None = None  # the item being streamed
        self._text: list[str] = []  # the open message's text
        self._lps: list[dict] = []  # ... and its logprobs
        self._held: list[dict] = []  # logprobs of text the tool parser still holds back

    @staticmethod
    def error_body(e: APIError) -> dict:
        return e.body()

    # -- streams --------------------------------------------------------------------------------

    def _send(self, kind: str, **fields: Any) -> bytes:
        self._seq += 1
        return sse({"type": kind, "sequence_number": self._seq - 1, **fields}, event=kind)

    def start(self) -> list[bytes]:
        r = self._response([], "in_progress")
        return [self._send("response.created", response=r), self._send("response.in_progress", response=r)]

    def event(self, ev: ReplyEvent) -> list[bytes]:
        if isinstance(ev, Text):
            self._held += self._logprobs(ev.logprobs)
            if not ev.text:
                return []
            out: list[bytes] = []
            if self._open is None or self._open["type"] != "message":
                out = self._begin({"type": "message", "id": f"msg_{secrets.token_hex(12)}", "status": "in_progress",
                                   "role": "assistant", "content": []})
            lps, self._held = self._held, []
            self._text.append(ev.text)
            self._lps += lps
            return [*out, self._send("response.output_text.delta", **self._where(), content_index=0,
                                     delta=ev.text, logprobs=lps)]
        if isinstance(ev, CallDelta):
            out = []
            if ev.id is not None:
                self._held = []  # they were the call's markup
                out = self._begin({"type": "function_call", "id": f"fc_{secrets.token_hex(12)}", "call_id": ev.id,
                                   "name": ev.name, "arguments": "", "status": "in_progress"})
            assert self._open is not None and self._open["type"] == "function_call"
            self._open["arguments"] += ev.arguments
            if ev.arguments:
                out.append(self._send("response.function_call_arguments.delta", **self._where(),
                                      delta=ev.arguments))
            return out
        assert isinstance(ev, End)
        status = _status(ev)
        out = self._close(status)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return [*out, self._send(kind, response=self._response(self._items, status, ev.summary))]

    def failed(self, e: APIError) -> bytes:
        return self._send("error", code=e.code, message=e.message, param=e.param)

    def _where(self) -> dict:
        assert self._open is not None
        return {"item_id": self._open["id"], "output_index": len(self._items)}

    def _begin(self, item: dict) -> list[bytes]:
        out = self._close("completed")
        self._open = item
        out.append(self._send("response.output_item.added", output_index=len(self._items), item=item))
        if item["type"] == "message":
            self._text, self._lps = [], []
            out.append(self._send("response.content_part.added", **self._where(), content_index=0,
                                  part=_part("", [])))
        return out

    def _close(self, status: str) -> list[bytes]:
        item = self._open
        if item is None:
            return []
        out, where = [], self._where()
        if item["type"] == "message":
            text = "".join(self._text)
            item = _message(item["id"], text, self._lps, status)
            out += [self._send("response.output_text.done", **where, content_index=0, text=text, logprobs=self._lps),
                    self._send("response.content_part.done", **where, content_index=0, part=item["content"][0])]
        else:
            item = {**item, "status": status}
            out.append(self._send("response.function_call_arguments.done", **where, arguments=item["arguments"]))
        out.append(self._send("response.output_item.done", output_index=where["output_index"], item=item))
        self._items.append(item)
        self._open = None
        return out

    # -- whole responses ------------------------------------------------------------------------

    def whole(self, reply: Assembler, end: End) -> dict:
        status = _status(end)
        output = []
        if reply.content or not end.calls:
            output.append(_message(f"msg_{secrets.token_hex(12)}", reply.content, self._logprobs(reply.logprobs),
                                   status))
        output += [{"type": "function_call", "id": f"fc_{secrets.token_hex(12)}", "call_id": c.id, "name": c.name,
                    "arguments": c.arguments, "status": "completed"} for c in end.calls]
        return self._response(output, status, end.summary)

    def _response(self, output: list[dict], status: str, s: Summary | None = None) -> dict:
        r, choice = self.req, self.req.tool_choice
        out = {"id": self.id, "object": "response", "created_at": self.created, "status": status,
               "model": self.model, "output": output, "error": None,
               "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
               "instructions": None, "metadata": {}, "parallel_tool_calls": True,
               "temperature": r.sampling.temperature, "top_p": r.sampling.top_p, "max_output_tokens": r.max_tokens,
               "tool_choice": {"type": "function", **choice} if isinstance(choice, dict) else choice,
               "tools": [{"type": "function", "strict": False, **t["function"]} for t in r.tools],
               "previous_response_id": None, "store": False, "usage": None}
        if s is not None:
            out["usage"] = {"input_tokens": s.prompt_tokens, "input_tokens_details": {"cached_tokens": s.reused_tokens},
                            "output_tokens": s.generated_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                            "total_tokens": s.prompt_tokens + s.generated_tokens}
            out.update(timings=timings(s), specgen=specgen_stats(s, self.job.drafter))
        return out

    def _logprobs(self, lps: list[TokenLogprob]) -> list[dict]:
        return [chat_logprob(lp) for lp in lps] if self.req.logprobs is not None else []


def _status(end: End) -> str:
    return "incomplete" if end.finish == "length" else "completed"


def _part(text: str, logprobs: list[dict]) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}


def _message(item_id: str, text: str, logprobs: list[dict], status: str) -> dict:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [_part(text, logprobs)]}


__all__ = ["ResponsesReply", "parse_responses"]
