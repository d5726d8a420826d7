"""The one exception type the CLI turns into a one-line message."""

from __future__ import annotations

import math
import re
from typing import Mapping

SETTINGS = ("target", "draft", "drafter", "draft_max", "n_ctx", "draft_p_min", "threads", "gpu_layers",
            "draft_gpu_layers", "max_tokens", "temperature", "top_k", "top_p", "min_p", "repeat_penalty",
            "repeat_last_n", "frequency_penalty", "presence_penalty", "seed", "limit", "repeat", "pair",
            "n_indent", "max_lines", "parallel", "exact")
"""The settings an error message may name as `{field}`: EngineOptions and SamplingParams fields, a
generation's max_tokens and line rules, a benchmark plan's limit and repeat, the pair whose models a
command loads."""

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

    @property
    def setting(self) -> str | None:
        """The first setting the message names, if any (an HTTP API reports the field at fault)."""
        m = _SETTING.search(super().__str__())
        return m.group(1) if m else None

    def __str__(self) -> str:
        return self.worded()


class ModelFault(SpecgenError):
    """The model or llama.cpp failed while it ran, whatever it was asked: a server answers 5xx, not 4xx."""


def worded(text: str, names: Mapping[str, str] | None = None) -> str:
    """*text* with each `{setting}` in a front end's own name for it (notes use this too)."""
    names = names or {}
    return _SETTING.sub(lambda m: names.get(m.group(1), m.group(1)), text)


def shorten(text: object, limit: int = 80) -> str:
    """A user-given value fit to echo in a one-line message (a 5,000-character name is cut)."""
    s = str(text)
    return s if len(s) <= limit else f"{s[:limit - 20]}… ({len(s)} characters)"


def is_finite_number(x: object) -> bool:
    """Whether *x* is a real number a float can hold: an int or a float, not a bool (to Python, True is 1),
    not NaN or an infinity, not an int past the largest float."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int of hundreds of digits
        return False


def kind_of(value: object) -> str:
    """What kind of value *value* is, as JSON names it ("an object", "an array", "a boolean"...); NaN and the
    infinities, which JSON has no number for, by the names Python's json writes them."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    for kind, name in ((bool, "a boolean"), (dict, "an object"), ((list, tuple), "an array"), (str, "a string"),
                       ((int, float), "a number"), (type(None), "null")):
        if isinstance(value, kind):  # bool first: to Python, True is a number too
            return name
    return type(value).__name__


# C0 and C1 controls (escape sequences, bell, carriage return, backspace, and the single-byte CSI), DEL,
# and the invisible marks that reorder text on screen (bidirectional overrides and isolates, line separators).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def error_line(text: str) -> str:
    """The line a failing command ends with, on stderr (every way out words it so)."""
    return f"specgen: error: {printable(text)}"  # a value it quotes may come from any file or name


def warning_line(text: str) -> str:
    """A line about something that does not stop the command, on stderr."""
    return f"specgen: warning: {printable(text)}"


def unsendable(value: str, spaces: bool = True) -> str | None:
    """What kind of character, first in *value*, an HTTP header cannot carry ("a line break", "a non-ASCII
    character", "a control character"; "a space" too unless *spaces*), or None when every one is printable
    ASCII (or a space)."""
    bad = next((c for c in value if not (" " if spaces else "!") <= c <= "~"), None)
    if bad is None:
        return None
    if bad == " ":
        return "a space"
    return "a line break" if bad in "\r\n" else "a non-ASCII character" if ord(bad) > 127 else "a control character"


def printable(text: object, lines: bool = False) -> str:
    """Text from elsewhere (a file, a name, a note, model metadata, a client's request) fit to show on a
    terminal: every control character spelled out as Python writes it (`\\x1b`, `\\n`), so none can move the
    cursor, retitle the window, recolour what follows or break a one-line message.  With *lines*, line ends
    stay (a text of several lines shown as such)."""
    def spelled(m: re.Match) -> str:
        c = m.group()
        return c if lines and c == "\n" else c.encode("unicode_escape").decode("ascii")

    return _CONTROL.sub(spelled, str(text))
