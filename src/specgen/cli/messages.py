"""What the `specgen` command says on stderr besides its output: error and warning lines, with the
library's settings named by their flags."""

from __future__ import annotations

import logging
import sys

from .. import errors
from ..errors import SETTINGS, SpecgenError, worded
from ..textstream import user_text

_FLAG_OF = {"n_ctx": "--ctx"}
"""The settings whose flag is not their field name in dashes."""

SETTING_FLAGS = {name: _FLAG_OF.get(name, "--" + name.replace("_", "-")) for name in SETTINGS}
"""How the CLI words the settings that library errors name (see SpecgenError.worded)."""


def failure(problem: Exception | str) -> str:
    """The line a failing command ends with (`errors.error_line`), its settings named by their flags."""
    return errors.error_line(problem.worded(SETTING_FLAGS) if isinstance(problem, SpecgenError) else str(problem))


def warn(text: str) -> None:
    """A warning that does not stop the command, on stderr."""
    print(errors.warning_line(worded(text, SETTING_FLAGS)), file=sys.stderr, flush=True)


def decoded(data: bytes | str, what: str) -> str:
    """A user's text (stdin, the prompt, --system) as the engine takes it (`user_text`), with a warning that
    says how many bytes were not UTF-8."""
    text, bad = user_text(data, what)
    if bad:
        warn(f"{what} is not valid UTF-8: {bad} bytes were replaced with \ufffd")
    return text


class _LibraryWarnings(logging.Handler):
    """What the library logs as a warning (a cache file it had to set aside) is a warning line here too."""

    def emit(self, record: logging.LogRecord) -> None:
        warn(record.getMessage())


logging.getLogger("specgen").addHandler(_LibraryWarnings(logging.WARNING))


__all__ = ["SETTING_FLAGS", "decoded", "failure", "warn"]
