"""The one exception type the CLI turns into a one-line message."""


class SpecgenError(Exception):
    """A user-facing error: its message is a complete one-line explanation."""
