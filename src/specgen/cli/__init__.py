"""The `specgen` command: thin front ends over the library.

Every command turns SpecgenError (and Ctrl+C) into one line on stderr and a
non-zero exit; no traceback reaches a user.
"""

from __future__ import annotations

import os
import signal
import sys


def _interrupted_while_starting(signum, frame) -> None:
    print("specgen: interrupted", file=sys.stderr)
    os._exit(130)


# Importing the commands (typer, rich, numpy) takes a second or more on a busy machine; Ctrl+C
# then would print an import traceback.  Until main() runs, it exits quietly instead (only in the
# `specgen` program: a library user importing this module keeps their own handler).
if (os.path.basename(sys.argv[0]) in ("specgen", "__main__.py")
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
    signal.signal(signal.SIGINT, _interrupted_while_starting)

import errno  # noqa: E402
import select  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from ..errors import SpecgenError, printable  # noqa: E402
from ..fileio import os_problem  # noqa: E402

app = typer.Typer(
    name="specgen",
    help="Local speculative generation: a small draft model guesses, the target checks. "
         "Same output as the target alone, faster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

from .messages import failure  # noqa: E402


@app.callback()
def _commands() -> None:
    # A callback keeps `specgen` a group of commands even when only one of them is registered.
    pass


# The module that registers each command.  Only the invoked command's module is
# imported: a script piping into `specgen run` should not pay for the Hub client,
# the chat screen or the bench tables.  Help, completion or an unknown name load all.
_MODULES = ("run", "models", "chat", "bench", "serve", "worker")
_COMMANDS = {"run": "run", "chat": "chat", "bench": "bench", "serve": "serve", "pull": "models", "list": "models",
             "rm": "models", "pair": "models", "worker": "worker"}


def register_commands(argv: list[str] | None = None) -> None:
    """Import the command modules that *argv* needs (all of them when it is None or names no known command)."""
    import importlib

    first = next((a for a in argv or [] if not a.startswith("-")), None)
    only = _COMMANDS.get(first) if argv is not None else None
    for name in [only] if only else _MODULES:
        importlib.import_module(f"{__name__}.{name}")


BROKEN_PIPE_EXIT = 128 + 13
"""A reader that closed the pipe early (`specgen run ... | head`): exit as a process killed by SIGPIPE
reports in the shell, the status `cat` and `head` give, with no message."""


class _PipeClosed(Exception):
    """Not an OSError, so that click's own EPIPE handling (exit 1) lets it through to main()."""


def _broken_pipe(self) -> None:
    raise _PipeClosed


# rich's own handler exits 1 from inside print(); route it to main()'s quiet exit instead.
Console.on_broken_pipe = _broken_pipe


def _stdout_closed() -> bool:
    """True when stdout is a pipe whose reader has gone (poll reports an error on the write end)."""
    try:
        p = select.poll()
        p.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in p.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _silence_stdout() -> None:
    # Whatever is still buffered for stdout would fail again at interpreter exit and print Python's
    # "Exception ignored" lines (and make the status 120).
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _exit_broken_pipe() -> None:
    _silence_stdout()
    sys.exit(BROKEN_PIPE_EXIT)


_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG)
"""What an OSError naming no file means when it reaches main(): writing stdout failed."""


_closed_stdout = False
"""Whether the program started with stdout closed (see `_standard_streams`)."""


def _os_error_exit(e: OSError) -> None:
    if e.errno == errno.EPIPE:
        _exit_broken_pipe()
    if e.errno == errno.EBADF and not e.filename and _closed_stdout:
        problem = "cannot write the output: stdout is closed"
    else:
        what = f"{e.filename}: " if e.filename else "cannot write the output: " if e.errno in _WRITE_ERRORS else ""
        problem = what + os_problem(e)
    print(failure(problem), file=sys.stderr)
    _silence_stdout()
    sys.exit(1)


def _standard_streams() -> None:
    """A closed stdin (`<&-`) reads as /dev/null and a closed stderr takes what is written as /dev/null does:
    Python leaves them None, and the next file opened would take their number.  A closed stdout (`>&-`) is
    /dev/null opened only to read, so that, as with `cat >&-`, the first output written fails the command
    (EBADF) instead of vanishing, while a command that prints nothing succeeds.  Text the output encoding
    cannot show (PYTHONIOENCODING=ascii, a POSIX locale) is written escaped (\\xe9) instead of failing."""
    global _closed_stdout
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        if getattr(sys, name) is not None:
            continue
        _closed_stdout = _closed_stdout or fd == 1
        null = os.open(os.devnull, os.O_WRONLY if fd == 2 else os.O_RDONLY)
        if null != fd:
            try:
                os.fstat(fd)  # taken since by some file: leave that be
            except OSError:
                os.dup2(null, fd)
                os.close(null)
                null = fd
        setattr(sys, name, open(null, "r" if fd == 0 else "w", closefd=null != fd))
    for stream in (sys.stdout, sys.stderr):
        # A POSIX locale gives stdout "surrogateescape", which fails on any character past ASCII just the same.
        if getattr(stream, "errors", None) in ("strict", "surrogateescape") and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main() -> None:
    _standard_streams()
    try:
        _main()
    finally:
        try:  # here, on every way out, not at interpreter exit, where a failure prints a warning
            sys.stdout.flush()
        except OSError as e:
            _os_error_exit(e)


def _main() -> None:
    register_commands(sys.argv[1:])  # still under the quiet start-up Ctrl+C handler
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        rc = app(standalone_mode=False)
    except SpecgenError as e:
        print(failure(e), file=sys.stderr)
        sys.exit(1)
    except _PipeClosed:
        _exit_broken_pipe()
    except SystemExit as e:
        # click turns a BrokenPipeError from print() into exit 1; make it the documented status.
        if e.code == 1 and _stdout_closed():
            _exit_broken_pipe()
        raise
    except (KeyboardInterrupt, typer.Abort, EOFError):
        print("specgen: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except OSError as e:  # e.g. a closed pipe (`specgen run ... | head`) or a full disk
        _os_error_exit(e)
    except Exception as e:
        # Usage errors: newer typer raises its own copy of click's exceptions, older
        # typer raises click's; both have show() and exit_code.
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            sys.exit(e.exit_code)
        if os.environ.get("SPECGEN_DEBUG"):
            raise
        print(f"specgen: internal error: {type(e).__name__}: {printable(e)} (SPECGEN_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        sys.exit(70)
    # typer (standalone_mode=False) turns Ctrl+C into `return 130`.
    if rc == 130:
        print("specgen: interrupted", file=sys.stderr)
    sys.exit(rc if isinstance(rc, int) else 0)
