"""Text in and out: a user's bytes decided once (`user_text`), and token bytes turned into text
pieces (`TextStream`): whole UTF-8 characters, stop strings held back.

A token may end in the middle of a multi-byte character, and a stop string may
straddle tokens; both mean some bytes must wait before they can be shown.  Each
piece keeps the source of its token (accepted draft or target) so front ends
can colour it.
"""

from __future__ import annotations

import codecs
from typing import Sequence

from .errors import SpecgenError


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


class TextStream:
    def __init__(self, stop: Sequence[str] = ()):
        self.stop = [s for s in stop if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: list[tuple[str, bool]] = []  # (text, from_draft), not yet released
        self.text = ""  # everything released so far
        self.stopped = False

    def _pending_text(self) -> str:
        return "".join(t for t, _ in self._pending)

    def push(self, data: bytes, from_draft: bool) -> list[tuple[str, bool]]:
        """Add one token's bytes; return the pieces that are now safe to show."""
        if self.stopped:
            return []
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
                self.stopped = True
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
        self.text += "".join(t for t, _ in out)
        return out
