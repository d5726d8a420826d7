"""`specgen run`: one prompt in, the target's text out; made for pipes and scripts."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, List, Optional

import typer

from ..engine import Piece, Summary
from ..errors import SpecgenError
from ..fileio import read_regular, read_stream
from ..formats.infill import Infill, infill_tokens
from ..settings import check_count, check_given
from ..build import topology
from ..llama.chat_template import chat_tokens, messages_for
from ..statsline import stats_line
from . import app
from .messages import decoded
from .options import EngineFlags, engine_command, load


def read_prompt(arg: str | None, exact: bool = False) -> str:
    """stdin (when piped) first, then the argument: `cat app.py | specgen run "add type hints"`.

    *exact* (the code before an infill's cursor) joins them as they are, every blank and line break kept.
    """
    parts = []
    if not sys.stdin.isatty():  # a closed stdin reads as /dev/null (see main)
        piped = decoded(read_stream(sys.stdin, "stdin"), "stdin")
        if piped.strip() or exact and piped:
            parts.append(piped if exact else piped.rstrip("\n"))
    if arg:
        parts.append(decoded(arg, "the prompt"))
    if not parts and not exact:
        raise SpecgenError("no prompt: give one as an argument or pipe it on stdin")
    return ("" if exact else "\n\n").join(parts)


def read_suffix(text: str | None, path: str | None) -> str | None:
    """The code after the cursor, from --suffix or --suffix-file (not both); None: not an infill."""
    if text is not None and path is not None:
        raise SpecgenError("give --suffix or --suffix-file, not both")
    if path is not None:
        check_given("--suffix-file", path)
        return decoded(read_regular(path, "the --suffix-file"), f"--suffix-file {path}")
    return decoded(text, "--suffix") if text is not None else None


@app.command()
@engine_command
def run(
    prompt: Annotated[Optional[str], typer.Argument(help="The prompt; piped stdin is placed before it.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 512,
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt.")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Send the prompt as is, without the chat template.")] = False,
    suffix: Annotated[Optional[str], typer.Option(help="Fill in the middle: the code after the cursor (the prompt "
                                                  "is the code before it, taken as is).")] = None,
    suffix_file: Annotated[Optional[str], typer.Option(help="Fill in the middle, with the code after the cursor "
                                                       "read from this file.")] = None,
    stop: Annotated[Optional[List[str]], typer.Option(help="Stop when this string appears (repeatable).")] = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Keep going past end-of-generation "
                                             "(fixed-length runs for timing).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object with text and stats.")] = False,
    stats: Annotated[bool, typer.Option("--stats", help="Print the summary line (on stderr) when piped.")] = False,
    no_color: Annotated[bool, typer.Option("--no-color", help="Don't colour accepted draft text.")] = False,
    *,
    flags: EngineFlags,
) -> None:
    """Generate a reply to PROMPT with speculative decoding."""
    check_count("max_tokens", max_tokens)
    for name, value in (("--system", system), *(("--stop", s) for s in stop or ())):
        check_given(name, value)
    sampling = flags.sampling()
    after = read_suffix(suffix, suffix_file)
    if after is not None and (system is not None or raw):
        raise SpecgenError(f"{'--system' if system is not None else '--raw'} does not apply to an infill "
                           "(--suffix): the prompt is the code before the cursor")
    text_in = read_prompt(prompt, exact=after is not None)
    if after is not None and not (text_in or after):
        raise SpecgenError("the code before the cursor (the prompt) and after it (--suffix) are both empty: "
                           "nothing to fill in around")
    system = decoded(system, "--system") if system is not None else None
    opts = flags.engine_options()
    engine = load(opts)
    if after is not None:
        tokens = infill_tokens(engine.target, Infill(text_in, after))
    else:
        tokens = chat_tokens(engine.target, messages_for(text_in, system), raw=raw)
    events = engine.generate(tokens, max_tokens=max_tokens, sampling=sampling, stop=stop or (),
                             ignore_eos=ignore_eos)

    if json_out:
        summary = next(e for e in events if isinstance(e, Summary))
        print(json.dumps({"text": summary.text, "target": str(opts.target),
                          "draft": str(opts.draft) if opts.draft else None,
                          "drafter": engine.drafter.name, "topology": topology(engine),
                          "stats": summary.stats()}))
        return

    tty = sys.stdout.isatty()
    color = tty and not no_color and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
    if not tty:  # a pipe: plain text, without loading rich
        for ev in events:
            if isinstance(ev, Piece):
                sys.stdout.write(ev.text)
                sys.stdout.flush()
            elif isinstance(ev, Summary):
                if not ev.text.endswith("\n"):
                    sys.stdout.write("\n")
                if stats:
                    print(stats_line(ev.stats()), file=sys.stderr)
        return
    from rich.console import Console

    out = Console(highlight=False, markup=False, emoji=False, soft_wrap=True, force_terminal=color or None,
                  no_color=not color)
    err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)
    for ev in events:
        if isinstance(ev, Piece):
            out.print(ev.text, style="green" if ev.from_draft and color else None, end="")
            out.file.flush()
        elif isinstance(ev, Summary):
            if not ev.text.endswith("\n"):
                out.print()
            err.print(stats_line(ev.stats()), style="dim")
