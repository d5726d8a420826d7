"""Other APIs' request bodies as OpenAI chat bodies, so every rule about a request is checked once (in
schema.py), while its errors still name the field the caller sent.
"""

from __future__ import annotations

from typing import Any

from ..sampling import SamplingParams
from .schema import APIError, GenRequest, parse_chat

EXTENSIONS = ("drafter", "draft_max", "top_k", "min_p", "repeat_penalty", "seed", "ignore_eos", "cache_prompt",
              "exact")
"""Fields every API takes as the chat API does: specgen's own, and llama-server's sampling extras."""


class Translation:
    """A chat body being built from another API's body, with where each of its fields came from."""

    def __init__(self, body: dict, same: tuple[str, ...]):
        self.chat: dict[str, Any] = {k: body[k] for k in (*same, *EXTENSIONS) if k in body}
        self.messages: list[dict] = []
        self.names: dict[str, str] = {}
        """A chat field's path -> the caller's; a longer path takes its longest named prefix."""

    def message(self, msg: dict, where: str, fields: dict[str, str] | None = None) -> dict:
        """Add *msg*, which came from *where*; *fields* maps its own fields ("content", "tool_calls[0]")."""
        at = f"messages[{len(self.messages)}]"
        self.names[at] = where
        for name, path in (fields or {}).items():
            self.names[f"{at}.{name}"] = path
        self.messages.append(msg)
        return msg

    def name(self, chat_path: str, where: str) -> None:
        self.names[chat_path] = where

    def json_format(self, fmt: object, where: str) -> None:
        """The output format at *where* (`{"type": "json_schema", "schema", ...}` and the like) as the chat
        API's response_format."""
        if fmt is None:
            return
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            fmt = {"type": "json_schema", "json_schema": {k: fmt[k] for k in ("name", "schema") if k in fmt}}
        self.chat["response_format"] = fmt
        for chat_name in ("response_format", "response_format.json_schema"):
            self.name(chat_name, where)

    def parse(self, defaults: SamplingParams) -> GenRequest:
        self.chat["messages"] = self.messages
        try:
            return parse_chat(self.chat, defaults)
        except APIError as e:
            raise self.reworded(e) from None

    def reworded(self, e: APIError) -> APIError:
        """*e* naming the caller's field where it names a chat field."""
        if e.param is None:
            return e
        param = rename(e.param, self.names)
        if param == e.param:
            return e
        return APIError(e.status, e.message.replace(e.param, param), param=param, code=e.code, type=e.type,
                        headers=e.headers)


def rename(path: str, names: dict[str, str]) -> str:
    """*path* with its longest prefix that *names* holds (a prefix ends before '.' or '[') replaced."""
    cuts = [i for i, ch in enumerate(path) if ch in ".["] + [len(path)]
    for i in reversed(cuts):
        if path[:i] in names:
            return names[path[:i]] + path[i:]
    return path


__all__ = ["EXTENSIONS", "Translation", "rename"]
