"""llama-server's `/infill` (`POST /infill`): the code at an editor's cursor, in llama-server's own reply shape.

Editor plugins written for llama-server (its VS Code and Vim plugins) read
`content`, `stop`, `tokens_predicted`, `tokens_cached`, `truncated` and
`timings`; a stream is `data: {...}` lines, the last with `stop: true`, and no
`[DONE]` (that is the OpenAI routes' marker).  The request is read in schema.py
(`parse_infill`); the prompt is built in formats/infill.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..engine import Summary
from .openai_api import specgen_stats, sse, timings
from .reply import Assembler, End, ReplyEvent, Text
from .schema import APIError, GenRequest

if TYPE_CHECKING:
    from .worker import Job

STOP_TYPE = {"eos": "eos", "stop": "word", "block": "limit", "limit": "limit", "max_tokens": "limit",
             "context": "limit"}
"""The engine's stop reasons in llama-server's `stop_type` words (its indentation rule stops as a limit)."""


class InfillReply:
    """One /infill request's reply, whole or streamed."""

    def __init__(self, req: GenRequest, model: str, job: "Job"):
        self.req, self.model, self.job = req, model, job

    @staticmethod
    def error_body(e: APIError) -> dict:
        return e.body()

    def start(self) -> list[bytes]:
        return []

    def event(self, ev: ReplyEvent) -> list[bytes]:
        if isinstance(ev, Text):
            if not ev.text:
                return []
            meter = self.job.meter
            return [sse({"index": 0, "content": ev.text, "tokens": [], "stop": False, "id_slot": self.job.slot,
                         "tokens_predicted": meter.summary.generated_tokens if meter else 0,
                         "tokens_evaluated": self.job.prompt_tokens})]
        if isinstance(ev, End):
            return [sse(self._final("", ev.summary))]
        return []  # a tool call: /infill offers no tools

    def failed(self, e: APIError) -> bytes:
        return sse(e.body())

    def whole(self, reply: Assembler, end: End) -> dict:
        return self._final(reply.content, end.summary)

    def _final(self, content: str, s: Summary) -> dict:
        p = self.req.sampling
        lines = self.req.lines
        settings = {"n_predict": self.req.max_tokens if self.req.max_tokens is not None else -1,
                    "temperature": p.temperature, "top_k": p.top_k, "top_p": p.top_p, "min_p": p.min_p,
                    "repeat_penalty": p.repeat_penalty, "seed": p.seed if p.seed is not None else -1,
                    "n_indent": lines.n_indent if lines else 0,
                    "t_max_predict_ms": round(lines.seconds * 1e3) if lines and lines.seconds else -1,
                    "stop": list(self.req.stop)}
        return {"index": 0, "content": content, "tokens": [], "id_slot": self.job.slot, "stop": True,
                "model": self.model,
                "tokens_predicted": s.generated_tokens, "tokens_evaluated": s.prompt_tokens,
                "generation_settings": settings, "prompt": "", "has_new_line": "\n" in s.text,
                "truncated": s.stop_reason == "context", "stop_type": STOP_TYPE.get(s.stop_reason, "none"),
                "stopping_word": s.stop_string, "tokens_cached": s.reused_tokens + s.generated_tokens,
                "timings": timings(s), "specgen": specgen_stats(s, self.job.drafter)}


__all__ = ["InfillReply"]
