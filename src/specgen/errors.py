"""The one exception type the CLI turns into a one-line message."""

from __future__ import annotations

import re
from typing import Mapping

SETTINGS = ("target", "draft", "drafter", "draft_max", "n_ctx", "gpu_layers")
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
        names = names or {}
        return _SETTING.sub(lambda m: names.get(m.group(1), m.group(1)), super().__str__())

    def __str__(self) -> str:
        return self.worded()
