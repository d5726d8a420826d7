"""Text in and out: a user's bytes decided once (`user_text`), and token bytes turned into text
pieces (`TextStream`): whole UTF-8 characters, stop strings held back, an editor's line rules kept.

A token may end in the middle of a multi-byte character, and a stop string may
straddle tokens; both mean some bytes must wait before they can be shown.  Each
piece keeps the source of its token (accepted draft or target) so front ends
can colour it.
"""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass
from typing import Sequence

from .errors import SpecgenError, is_finite_number, shorten


def user_text(data: bytes | str, what: str) -> tuple[str, int]:
    """A prompt as the engine can take it, and how many bytes were not UTF-8.

    Undecodable bytes become U+FFFD (a mis-encoded file still gets an answer);
    NUL bytes mean binary data, which no model can use, so it is refused.
    A str may carry such bytes as surrogates (argv, input() under some locales).
    """
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    if b"\0" in raw:
        raise SpecgenError(f"{what} is binary data (it contains NUL bytes), not text; give a text prompt")
    text = raw.decode("utf-8", errors="replace")
    bad = 0 if "\ufffd" not in text else text.count("\ufffd") - raw.decode("utf-8", "ignore").count("\ufffd")
    return text, bad


@dataclass(frozen=True)
class Lines:
    """Where an editor wants a completion to end, besides its stop strings (llama-server's `n_indent` and
    `t_max_predict_ms`, and a line count).  Each rule ends the reply at the end of a line, never inside one."""
    n_indent: int = 0
    """A line after the first that begins with less indentation than this (spaces and tabs) has left the
    block being completed: the reply ends before it.  0: no rule."""
    max_lines: int = 0
    """The most lines the reply may have.  0: no limit."""
    seconds: float = 0.0
    """Once the reply has run this long, it ends at its next line break.  0: no limit."""

    def check(self) -> Lines:
        """Refuse a rule out of bounds, named as `{field}` (SpecgenError.setting)."""
        for name in ("n_indent", "max_lines"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SpecgenError(f"{{{name}}} must be a whole number, 0 or more (0: no rule), "
                                   f"not {shorten(value)}")
        if not (is_finite_number(self.seconds) and self.seconds >= 0):
            raise SpecgenError(f"the time limit must be 0 or more seconds, not {shorten(self.seconds)}")
        return self

    @property
    def active(self) -> bool:
        return bool(self.n_indent or self.max_lines or self.seconds)


class TextStream:
    def __init__(self, stop: Sequence[str] = (), lines: Lines | None = None):
        self.stop = [s for s in stop if s]
        self.lines = lines if lines is not None and lines.active else None
        self._started = time.perf_counter()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: list[tuple[str, bool]] = []  # (text, from_draft), not yet released
        self.text = ""  # everything released so far
        self._breaks = 0  # line breaks in it
        self.stopped = False
        self.reason = ""
        """Why it stopped: "stop" (a stop string), "block" (a line left the block), "limit" (lines, time)."""
        self.matched = ""
        """The stop string that ended the text (the earliest, where several appeared at once)."""

    def _pending_text(self) -> str:
        return "".join(t for t, _ in self._pending)

    def push(self, data: bytes, from_draft: bool) -> list[tuple[str, bool]]:
        """Add one token's bytes; return the pieces that are now safe to show."""
        return self.push_all([(data, from_draft)])

    def push_all(self, tokens: Sequence[tuple[bytes, bool]]) -> list[tuple[str, bool]]:
        """Add several tokens' bytes (a step's), each with its source; return the pieces now safe to show.
        The same text as pushing them one at a time: the stop strings and line rules look at the text, not
        at where tokens begin, and one pass over it per step, not per token, is what a GPU's short steps
        can afford."""
        if self.stopped:
            return []
        for data, from_draft in tokens:
            text = self._decoder.decode(data)
            if text:
                self._pending.append((text, from_draft))
        return self._release(final=False)

    def flush(self) -> list[tuple[str, bool]]:
        """End of generation: release whatever is held (incomplete bytes become U+FFFD)."""
        if not self.stopped:
            tail = self._decoder.decode(b"", final=True)
            if tail:
                self._pending.append((tail, False))
        return self._release(final=True)

    def _release(self, final: bool) -> list[tuple[str, bool]]:
        pending = self._pending_text()
        cut = len(pending)
        for s in self.stop:
            i = pending.find(s)
            if i >= 0 and i < cut:
                cut = i
                self.stopped, self.reason, self.matched = True, "stop", s
        if self.lines is not None:
            at, why, hold = self._line_rules(pending, final)
            if at is not None and at < cut:
                cut, self.stopped, self.reason = at, True, why
            elif not self.stopped:
                cut = min(cut, hold)
        if not self.stopped and not final:
            # Hold back the longest tail that could still grow into a stop string.
            for s in self.stop:
                for k in range(min(len(s) - 1, len(pending)), 0, -1):
                    if pending.endswith(s[:k]):
                        cut = min(cut, len(pending) - k)
                        break
        out: list[tuple[str, bool]] = []
        taken = 0
        rest: list[tuple[str, bool]] = []
        for text, src in self._pending:
            if taken >= cut:
                rest.append((text, src))
            elif taken + len(text) <= cut:
                out.append((text, src))
            else:
                out.append((text[: cut - taken], src))
                rest.append((text[cut - taken:], src))
            taken += len(text)
        self._pending = [] if self.stopped else rest
        shown = "".join(t for t, _ in out)
        self.text += shown
        self._breaks += shown.count("\n")
        return out

    def _line_rules(self, pending: str, final: bool) -> tuple[int | None, str, int]:
        """Where in *pending* a line rule ends the reply (None: nowhere yet), why, and how much of it may be
        shown meanwhile.  Blank lines stay back under `n_indent` until a line inside the block follows them:
        a reply that leaves the block ends at its last line of code, not after the blank lines before the next."""
        rules = self.lines
        assert rules is not None
        done = self._breaks
        late = bool(rules.seconds) and time.perf_counter() - self._started >= rules.seconds
        blank_from = None  # the line break before a run of blank lines still open
        at = pending.find("\n")
        while at >= 0:
            done += 1
            if rules.max_lines and done >= rules.max_lines or late:
                return at, "limit", len(pending)
            end = pending.find("\n", at + 1)
            if rules.n_indent:
                line = pending[at + 1:end if end >= 0 else len(pending)]
                code = line.lstrip(" \t")
                if code and len(line) - len(code) < rules.n_indent:
                    return (at if blank_from is None else blank_from), "block", len(pending)
                if code:
                    blank_from = None
                elif blank_from is None:
                    blank_from = at
            at = end
        return None, "", len(pending) if blank_from is None or final else blank_from
