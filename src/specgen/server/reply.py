"""One request's reply, whatever API it is asked through: engine events in, text and tool calls out.

The engine yields text pieces and steps; a request with tools has its calls
parsed out of that text as it streams.  Each API (OpenAI's chat and
completions, Responses, Anthropic Messages) then only formats these events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from ..engine import Event, Piece, Step, Summary, TokenLogprob
from ..formats.tools import CallDelta, ContentDelta, ToolCall, ToolFormat

FINISH = {"eos": "stop", "stop": "stop", "block": "stop", "max_tokens": "length", "context": "length",
          "limit": "length"}


@dataclass
class Text:
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)
    """The tokens this text came from, when the request asked for logprobs."""


@dataclass
class End:
    summary: Summary
    finish: str
    """"stop", "length" or "tool_calls", in OpenAI's words (each API renames them)."""
    calls: list[ToolCall]


ReplyEvent = Union[Text, CallDelta, End]


class Assembler:
    """Turns a generation's events into reply events, one batch per verify step (so a stream sends one
    chunk per step, not one per token); keeps the whole reply for the APIs that answer at the end."""

    def __init__(self, tools: ToolFormat | None = None):
        self._parser = tools.stream() if tools is not None else None
        self._pending: list[str] = []
        self.text: list[str] = []
        self.logprobs: list[TokenLogprob] = []
        self.calls: list[ToolCall] = []

    def feed(self, ev: Event) -> list[ReplyEvent]:
        if isinstance(ev, Piece):
            self._pending.append(ev.text)
            return []
        if isinstance(ev, Step):
            return self._flush(ev.logprobs or [], final=False)
        if isinstance(ev, Summary):
            out = self._flush([], final=True)
            finish = FINISH[ev.stop_reason]
            if self.calls and finish == "stop":
                finish = "tool_calls"
            return [*out, End(ev, finish, list(self.calls))]
        return []

    def _flush(self, logprobs: list[TokenLogprob], final: bool) -> list[ReplyEvent]:
        text = "".join(self._pending)
        self._pending = []
        # End-of-generation tokens have no text and are not part of any API's logprobs.
        logprobs = [lp for lp in logprobs if lp.text]
        self.logprobs.extend(logprobs)
        if self._parser is None:
            deltas: list[ContentDelta | CallDelta] = [ContentDelta(text)] if text else []
        else:
            deltas = self._parser.push(text) if text else []
            if final:
                deltas += self._parser.finish()
            self.calls = list(self._parser.calls)
        out: list[ReplyEvent] = []
        for d in deltas:
            if isinstance(d, ContentDelta):
                if d.text:
                    out.append(Text(d.text))
                    self.text.append(d.text)
            else:
                out.append(d)
        if logprobs:
            first = next((e for e in out if isinstance(e, Text)), None)
            if first is None:
                out.insert(0, first := Text(""))
            first.logprobs = logprobs
        return out

    @property
    def content(self) -> str:
        return "".join(self.text)


__all__ = ["Assembler", "End", "FINISH", "ReplyEvent", "Text"]
