"""The engine settings a user picks by name or number, and the rule for each (one home)."""

from __future__ import annotations

import os
from typing import Any

from .errors import SpecgenError, shorten

DRAFTERS = ("auto", "model", "ngram", "none")
"""auto: n-gram copies, the draft model when it pays, else plain decoding; none: plain decoding."""


def uses_draft_model(drafter: str) -> bool:
    """Whether *drafter* loads the draft model (auto asks it only when it pays, but needs it loaded)."""
    return drafter in ("model", "auto")


def check_drafter(name: str) -> str:
    if name not in DRAFTERS:
        raise SpecgenError(f"unknown drafter {shorten(name)!r}; choose one of {', '.join(DRAFTERS)}")
    return name


def check_draft(drafter: str, draft: object) -> None:
    """Refuse the `model` drafter without a draft model (auto without one just never asks it)."""
    if drafter == "model" and not draft:
        raise SpecgenError("{drafter} model needs a draft model: pass {draft} PATH (or choose another {drafter})")


def check_given(name: str, value: Any, required: bool = False) -> Any:
    """A setting's value as given, where None means "left out": an empty one (what `--drafter "$UNSET"`
    passes) is refused, never taken for the default (a *required* one has none to take).  *name* is a
    `{setting}` or a front end's own word."""
    if isinstance(value, str) and value == "":
        raise SpecgenError(f"{name} is empty; give a value" + ("" if required else ", or leave it out for the default"))
    return value


def check_count(field: str, value: Any) -> int:
    """A setting that counts something (tokens to generate, prompts, repeats, threads): a whole number, 1 or more."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecgenError(f"{{{field}}} must be 1 or more, not {shorten(value)}")
    return value


def check_threads(n: int | None) -> tuple[int | None, list[str]]:
    """CPU threads as asked (None: llama.cpp's default), and a warning when they were cut to this machine's CPUs:
    more threads than CPUs only makes them wait for each other."""
    if n is None:
        return None, []
    check_count("threads", n)
    cores = os.cpu_count() or 1
    if n > cores:
        return cores, [f"{{threads}} {n} is more than this machine's {cores} CPUs; using {cores}"]
    return n, []


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


def shown_draft_max(n: int | None) -> int | str:
    """A draft length as people read it and as files keep it: the number, or 'auto' (None: the controller
    sizes each draft); `parse_draft_max` reads it back."""
    return "auto" if n is None else n


MAX_PARALLEL = 64
"""Server slots at most: far beyond what a batch of them gains on one machine, and each holds a context."""


def check_parallel(n: Any, exact: bool = False) -> int:
    """Slots the server decodes together: 1 (one request at a time) to MAX_PARALLEL.  Exact decoding keeps
    one sequence, whose batches never mix with another's."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_PARALLEL:
        raise SpecgenError(f"{{parallel}} must be from 1 to {MAX_PARALLEL}, not {shorten(n)}")
    if exact and n > 1:
        raise SpecgenError("{exact} decodes one request at a time: leave out {parallel} or give 1")
    return n
