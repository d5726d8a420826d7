"""OpenAI's chat and completions responses: whole objects, or `chat.completion.chunk` streams.

Each response carries `usage`, llama-server's `timings` and a `specgen` block,
so tools written for either server read ours unchanged.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from ..engine import Summary, TokenLogprob
from ..formats.tools import CallDelta
from .reply import Assembler, End, ReplyEvent, Text
from .schema import APIError, GenRequest

if TYPE_CHECKING:
    from .worker import Job


def sse(obj: dict, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


class OpenAIReply:
    """One request's response objects, whole or as stream chunks, for either endpoint."""

    def __init__(self, req: GenRequest, model: str, job: "Job"):
        self.req, self.model, self.job = req, model, job
        self.chat = req.kind == "chat"
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-specgen-{job.id}-{int(time.time())}"
        self.created = int(time.time())
        self._offset = 0  # characters sent so far: the completions API's text_offset

    @staticmethod
    def error_body(e: APIError) -> dict:
        return e.body()

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": "specgen"}

    # -- streams --------------------------------------------------------------------------------

    def start(self) -> list[bytes]:
        return [sse(self._chunk({"role": "assistant", "content": ""} if self.chat else {"text": ""}))]

    def event(self, ev: ReplyEvent) -> list[bytes]:
        if isinstance(ev, Text):
            delta = {"content": ev.text} if self.chat else {"text": ev.text}
            out = [sse(self._chunk(delta, logprobs=self._logprobs(ev.logprobs, ev.text)))]
            self._offset += len(ev.text)
            return out
        if isinstance(ev, CallDelta):
            call: dict = {"index": ev.index}
            if ev.id is not None:
                call.update(id=ev.id, type="function")
            fn = {"name": ev.name} if ev.name is not None else {}
            call["function"] = {**fn, "arguments": ev.arguments}
            return [sse(self._chunk({"tool_calls": [call]}))]
        assert isinstance(ev, End)
        out = [sse(self._chunk({} if self.chat else {"text": ""}, finish=ev.finish, summary=ev.summary))]
        if self.req.include_usage:
            out.append(sse({**self._head("chat.completion.chunk" if self.chat else "text_completion"),
                            "choices": [], "usage": usage(ev.summary), **self._stats(ev.summary)}))
        out.append(b"data: [DONE]\n\n")
        return out

    def failed(self, e: APIError) -> bytes:
        return sse(e.body())

    def _chunk(self, delta: dict, finish: str | None = None, summary: Summary | None = None,
               logprobs: dict | None = None) -> dict:
        if self.chat:
            choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            out = {**self._head("chat.completion.chunk"), "choices": [choice]}
        else:
            out = {**self._head("text_completion"), "choices": [{"index": 0, **delta, "logprobs": logprobs,
                                                                  "finish_reason": finish}]}
        if self.req.include_usage:
            out["usage"] = None
        if summary is not None:
            out.update(self._stats(summary))
        return out

    # -- whole responses ------------------------------------------------------------------------

    def whole(self, reply: Assembler, end: End) -> dict:
        s, text = end.summary, reply.content
        self._offset = 0
        logprobs = self._logprobs(reply.logprobs, text)
        if self.chat:
            message: dict = {"role": "assistant", "content": text if text or not end.calls else None}
            if end.calls:
                message["tool_calls"] = [{"id": c.id, "type": "function",
                                          "function": {"name": c.name, "arguments": c.arguments}}
                                         for c in end.calls]
            choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": end.finish}
            return {**self._head("chat.completion"), "choices": [choice], "usage": usage(s), **self._stats(s)}
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": end.finish}
        return {**self._head("text_completion"), "choices": [choice], "usage": usage(s), **self._stats(s)}

    def _stats(self, s: Summary) -> dict:
        return {"timings": timings(s), "specgen": specgen_stats(s, self.job.drafter)}

    def _logprobs(self, lps: list[TokenLogprob], text: str) -> dict | None:
        """Chat's `{"content": [...]}` or the completions API's parallel lists; None when not asked."""
        if self.req.logprobs is None:
            return None
        if self.chat:
            return {"content": [chat_logprob(lp) for lp in lps], "refusal": None}
        offsets, at = [], self._offset
        for lp in lps:
            offsets.append(at)
            at += len(_text(lp.text))
        return {"tokens": [_text(lp.text) for lp in lps], "token_logprobs": [lp.logprob for lp in lps],
                "top_logprobs": [{_text(t): v for _, t, v in lp.top} for lp in lps], "text_offset": offsets}


def _text(b: bytes) -> str:
    # A token may hold part of a character; OpenAI shows such a token's text with the replacement mark and
    # gives its exact bytes beside it.
    return b.decode("utf-8", "replace")


def chat_logprob(lp: TokenLogprob) -> dict:
    return {"token": _text(lp.text), "logprob": lp.logprob, "bytes": list(lp.text),
            "top_logprobs": [{"token": _text(t), "logprob": v, "bytes": list(t)} for _, t, v in lp.top]}


def usage(s: Summary) -> dict:
    return {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.generated_tokens,
            "total_tokens": s.prompt_tokens + s.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": s.reused_tokens}}


def timings(s: Summary) -> dict:
    """llama-server's `timings` object, so tools written for it read ours unchanged."""
    prompt_n = s.prompt_tokens - s.reused_tokens
    return {"prompt_n": prompt_n, "prompt_ms": round(s.prompt_seconds * 1e3, 3),
            "prompt_per_token_ms": round(s.prompt_seconds * 1e3 / prompt_n, 3) if prompt_n else 0.0,
            "prompt_per_second": round(prompt_n / s.prompt_seconds, 3) if s.prompt_seconds > 0 else 0.0,
            "cache_n": s.reused_tokens,
            "predicted_n": s.generated_tokens, "predicted_ms": round(s.decode_seconds * 1e3, 3),
            "predicted_per_token_ms": round(s.decode_seconds * 1e3 / s.generated_tokens, 3)
            if s.generated_tokens else 0.0,
            "predicted_per_second": round(s.decode_tps, 3),
            "draft_n": s.drafted, "draft_n_accepted": s.accepted}


def specgen_stats(s: Summary, drafter: str) -> dict:
    return {"drafter": drafter, "acceptance_rate": round(s.acceptance_rate, 4),
            "mean_accepted": round(s.mean_accepted, 4), "steps": s.steps, "drafter_steps": dict(s.drafter_steps),
            "draft_lengths": {str(k): v for k, v in sorted(s.draft_lengths.items())},
            "stop_reason": s.stop_reason}


__all__ = ["OpenAIReply", "chat_logprob", "specgen_stats", "sse", "timings", "usage"]
