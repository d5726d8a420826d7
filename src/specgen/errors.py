"""The one exception type the CLI turns into a one-line message."""

from __future__ import annotations

import re
from typing import Mapping

SETTINGS = ("target", "draft", "drafter", "draft_max", "n_ctx", "draft_p_min", "threads", "gpu_layers",
            "draft_gpu_layers", "max_tokens")
"""EngineOptions fields an error message may name as `{field}`."""

_SETTING = re.compile(r"\{(" + "|".join(SETTINGS) + r")\}")


class SpecgenError(Exception):
    """A user-facing error: its message is a complete one-line explanation.

    The library knows its settings by their EngineOptions field names, not by
    what a front end calls them, so a message names one in braces ("raise
    {n_ctx}").  `str()` shows the bare field name; `worded(names)` puts in each
    front end's own name for it (the CLI: its flag).
    """

    def worded(self, names: Mapping[str, str] | None = None) -> str:
        return worded(super().__str__(), names)

    def __str__(self) -> str:
        return self.worded()


def worded(text: str, names: Mapping[str, str] | None = None) -> str:
    """*text* with each `{setting}` in a front end's own name for it (notes use this too)."""
    names = names or {}
    return _SETTING.sub(lambda m: names.get(m.group(1), m.group(1)), text)


def shorten(text: object, limit: int = 80) -> str:
    """A user-given value fit to echo in a one-line message (a 5,000-character name is cut)."""
    s = str(text)
    return s if len(s) <= limit else f"{s[:limit - 20]}… ({len(s)} characters)"
