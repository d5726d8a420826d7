"""The one exception type the CLI turns into a one-line message."""


class SpecgenError(Exception):
    """A user-facing error: its message is a complete one-line explanation."""


def shorten(text: object, limit: int = 80) -> str:
    """A user-given value fit to echo in a one-line message (a 5,000-character name is cut)."""
    s = str(text)
    return s if len(s) <= limit else f"{s[:limit - 20]}… ({len(s)} characters)"
