"""The `specgen` command: thin front ends over the library.

Every command turns SpecgenError (and Ctrl+C) into one line on stderr and a
non-zero exit; no traceback reaches a user.
"""

from __future__ import annotations

import os
import sys

import typer

from ..errors import SpecgenError

app = typer.Typer(
    name="specgen",
    help="Local speculative generation: a small draft model guesses, the target checks. "
         "Same output as the target alone, faster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

@app.callback()
def _commands() -> None:
    # A callback keeps `specgen` a group of commands even when only one of them is registered.
    pass


# The module that registers each command.  Only the invoked command's module is
# imported: a script piping into `specgen run` should not pay for the Hub client,
# the chat screen or the bench tables.  Help, completion or an unknown name load all.
_MODULES = ("run", "models", "chat", "bench")
_COMMANDS = {"run": "run", "chat": "chat", "bench": "bench", "pull": "models", "list": "models", "rm": "models",
             "pair": "models"}


def register_commands(argv: list[str] | None = None) -> None:
    """Import the command modules that *argv* needs (all of them when it is None or names no known command)."""
    import importlib

    first = next((a for a in argv or [] if not a.startswith("-")), None)
    only = _COMMANDS.get(first) if argv is not None else None
    for name in [only] if only else _MODULES:
        importlib.import_module(f"{__name__}.{name}")


def main() -> None:
    register_commands(sys.argv[1:])
    try:
        rc = app(standalone_mode=False)
    except SpecgenError as e:
        print(f"specgen: error: {e}", file=sys.stderr)
        sys.exit(1)
    except (KeyboardInterrupt, typer.Abort, EOFError):
        print("specgen: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except OSError as e:  # e.g. a closed pipe (`specgen run ... | head`) or a full disk
        if getattr(e, "errno", None) == 32:
            sys.exit(0)
        print(f"specgen: error: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:
        # Usage errors: newer typer raises its own copy of click's exceptions, older
        # typer raises click's; both have show() and exit_code.
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            sys.exit(e.exit_code)
        if os.environ.get("SPECGEN_DEBUG"):
            raise
        print(f"specgen: internal error: {type(e).__name__}: {e} (SPECGEN_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        sys.exit(70)
    # typer (standalone_mode=False) turns Ctrl+C into `return 130`.
    if rc == 130:
        print("specgen: interrupted", file=sys.stderr)
    sys.exit(rc if isinstance(rc, int) else 0)
