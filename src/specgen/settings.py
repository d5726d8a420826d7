"""The engine settings a user picks by name or number, and the rule for each (one home)."""

from __future__ import annotations

from typing import Any

from .errors import SpecgenError, shorten

DRAFTERS = ("auto", "model", "ngram", "none")
"""auto: n-gram copies, the draft model when it pays, else plain decoding; none: plain decoding."""


def check_drafter(name: str) -> str:
    if name not in DRAFTERS:
        raise SpecgenError(f"unknown drafter {shorten(name)!r}; choose one of {', '.join(DRAFTERS)}")
    return name


def parse_draft_max(value: Any) -> int | None:
    """A draft length as typed or as read from models.yaml: 'auto' (or None) -> None, so the
    controller sizes each draft; else a whole number of tokens, 0 or more."""
    if value is None or value == "auto":
        return None
    n = value
    if isinstance(value, str):
        try:
            n = int(value)
        except ValueError:
            n = None
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise SpecgenError(f"{{draft_max}} must be a number of tokens (0 or more) or 'auto', not {shorten(value)!r}")
    return n
